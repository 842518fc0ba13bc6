"""Vimeo-90K septuplets in the official layout.

    ROOT/sequences/00001/0001/im1.png .. im7.png
    ROOT/sep_trainlist.txt, ROOT/sep_testlist.txt   (lines like `00001/0001`)

The LR inputs are frames 1, 3, 5, 7 downscaled x4 by MATLAB-compatible bicubic
(`augment.downscale`; for training the pipeline computes it on the crop it takes), or
read from a pre-made LR tree of the same layout (`lr_root`, e.g. Zooming Slow-Mo's
`vimeo_septuplet_matlabLRx4`, with all 7 frames per clip). The motion subsets of the test
split (Fast / Medium / Slow, used by every STVSR paper) ship with the package.
"""

import importlib.resources
import os

import numpy as np

from megan_jax.data.sources import DataError, FrameFolderSequence, read_image, stack_frames

NUM_FRAMES = 7
INPUT_FRAMES = (0, 2, 4, 6)  # im1, im3, im5, im7
NAMED_LISTS = {
    "fast": "fast_testset.txt",
    "medium": "medium_testset.txt",
    "slow": "slow_testset.txt",
    "test": "sep_testlist.txt",
    "train": "sep_trainlist.txt",
}


def resolve_list(list_file: str, root: str | None = None) -> str:
  """The path of a list: a name in `NAMED_LISTS`, a path, or a path relative to `root`."""
  if list_file in NAMED_LISTS:
    return str(importlib.resources.files("megan_jax.data") / "lists" / NAMED_LISTS[list_file])
  candidates = [list_file] + ([os.path.join(root, list_file)] if root else [])
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise DataError(
      f"{list_file}: list file not found (tried {candidates}); expected a path or one of "
      f"{sorted(NAMED_LISTS)}")


def read_list(list_file: str, root: str | None = None) -> list:
  """Clip ids (`00001/0001`) of a list file, blank lines skipped."""
  path = resolve_list(list_file, root)
  with open(path, encoding="utf-8") as f:
    clips = [line.strip() for line in f if line.strip()]
  if not clips:
    raise DataError(f"{path}: list file is empty, expected lines like 00001/0001")
  return clips


def _sequences_dir(root: str, what: str) -> str:
  if not os.path.isdir(root):
    raise DataError(f"{root}: Vimeo-90K {what} root not found")
  sub = os.path.join(root, "sequences")
  return sub if os.path.isdir(sub) else root


def _check_clips(seq_dir: str, clips: list, what: str, list_file: str = "",
                 root: str = "") -> None:
  missing = [c for c in clips if not os.path.isdir(os.path.join(seq_dir, c))]
  if missing:
    hint = ""
    own = os.path.join(root, NAMED_LISTS.get(list_file, "")) if root else ""
    if list_file in NAMED_LISTS and os.path.isfile(own):  # a partial copy with its own list
      hint = (f"; the list is the packaged {list_file!r} ({len(clips)} clips), and {root} has its "
              f"own {os.path.basename(own)}: give it as the list file "
              f"(--config.data.list_file={own} for training)")
    raise DataError(
        f"{seq_dir}: {len(missing)} {what} clip folders of the list not found, e.g. "
        f"{os.path.join(seq_dir, missing[0])}{hint}")


class VimeoSeptuplet:
  """The clips of one list, `seq_dir/<clip>/im{1..7}.png`; a grain random-access source.

  Record i is clip i at full size, uint8: {"gt": (7, H, W, 3), "where": its folder},
  plus "lr": (4, H/4, W/4, 3) frames 1, 3, 5, 7 of the LR tree when `lr_root` is given.
  Without an LR tree the pipeline computes the LR of the crop it takes.
  """

  def __init__(self, root: str, list_file: str, lr_root: str | None = None):
    self.root = root
    self.seq_dir = _sequences_dir(root, "GT")
    self.clips = read_list(list_file, root)
    _check_clips(self.seq_dir, self.clips, "GT", list_file, root)
    self.lr_dir = None
    if lr_root:
      self.lr_dir = _sequences_dir(lr_root, "LR")
      _check_clips(self.lr_dir, self.clips, "LR")

  def __len__(self) -> int:
    return len(self.clips)

  def frame_paths(self, i: int, lr: bool = False) -> list:
    base = os.path.join(self.lr_dir if lr else self.seq_dir, self.clips[i])
    frames = INPUT_FRAMES if lr else range(NUM_FRAMES)
    return [os.path.join(base, f"im{k + 1}.png") for k in frames]

  def __getitem__(self, i: int) -> dict:
    where = os.path.join(self.seq_dir, self.clips[i])
    record = {"gt": read_frames(self.frame_paths(i)), "where": where}  # (7, H, W, 3)
    if self.lr_dir is not None:
      record["lr"] = read_frames(self.frame_paths(i, lr=True))  # (4, H/4, W/4, 3)
    return record

  def sequence(self, i: int) -> FrameFolderSequence:
    """Clip i as a 7-frame sequence for evaluation (with its LR frames when `lr_root`)."""
    clip = self.clips[i]
    lr = None
    if self.lr_dir is not None:
      lr = FrameFolderSequence(os.path.join(self.lr_dir, clip), name=clip,
                               num_frames=NUM_FRAMES)
    return FrameFolderSequence(os.path.join(self.seq_dir, clip), name=clip, lr=lr,
                               num_frames=NUM_FRAMES)


def read_frames(paths: list) -> np.ndarray:
  return stack_frames([read_image(p) for p in paths], paths, os.path.dirname(paths[0]))
