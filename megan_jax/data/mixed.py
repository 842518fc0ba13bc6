"""Training sources beyond one dataset: the windows of any frame folders or videos, and a mix.

A user who wants to train (or fine-tune) on their own footage points `data.extra` at folders:
each entry is a Vimeo-90K septuplet tree (`ROOT/sequences/...` with `ROOT/sep_trainlist.txt`),
a folder of frame folders or video files (the Vid4 layout), a single frame folder, or a video
file. Every window of 2n+1 consecutive frames of every sequence is one training record, exactly
like the records of `embedded.EmbeddedTrainSource` and `vimeo.VimeoSeptuplet`, so the sources
concatenate into one grain random-access source.
"""

import os

import numpy as np

from megan_jax.data.sources import DataError, list_sequences
from megan_jax.data.vimeo import VimeoSeptuplet

VIMEO_LIST = "sep_trainlist.txt"


class SequenceWindows:
  """grain source over every window of `window` consecutive frames of `sequences`.

  Record = {"gt": uint8 (window, H, W, 3), "where": "<sequence> frames a..b"}.
  """

  def __init__(self, sequences: list, window: int):
    self.sequences = list(sequences)
    self.window = window
    self.records = []  # (sequence index, first frame)
    for k, seq in enumerate(self.sequences):
      count = seq.num_frames
      if count < window:
        raise DataError(f"{_where(seq)}: {count} frames, expected at least {window}")
      self.records += [(k, s) for s in range(count - window + 1)]

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> dict:
    k, start = self.records[i]
    seq = self.sequences[k]
    gt = seq.read(range(start, start + self.window))  # (window, H, W, 3)
    return {"gt": gt, "where": f"{_where(seq)} frames {start}..{start + self.window - 1}"}


class ConcatSource:
  """The records of several grain sources one after the other."""

  def __init__(self, sources: list):
    self.sources = list(sources)
    self._ends = np.cumsum([len(s) for s in self.sources])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, i: int) -> dict:
    k = int(np.searchsorted(self._ends, i, side="right"))
    start = int(self._ends[k - 1]) if k else 0
    return self.sources[k][i - start]


def _where(seq) -> str:
  return getattr(seq, "path", seq.name)


def folder_source(path: str, num_input_frames: int):
  """The training windows of one `data.extra` entry (see the module docstring)."""
  if not os.path.exists(path):
    raise DataError(f"config.data.extra: {path} does not exist; expected a Vimeo-90K septuplet "
                    f"tree, a folder of frame folders or videos, a frame folder or a video file")
  if os.path.isfile(os.path.join(path, VIMEO_LIST)):
    if num_input_frames != 4:
      raise DataError(f"{path}: Vimeo-90K septuplets need data.num_input_frames=4")
    return VimeoSeptuplet(path, VIMEO_LIST)
  return SequenceWindows(list_sequences(path), 2 * num_input_frames - 1)
