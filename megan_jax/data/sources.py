"""Frame sources: the `Sequence` protocol over frame folders, video files and arrays.

A sequence is an ordered list of RGB frames read by index as uint8 (k, H, W, 3).
Every reading problem (missing path, unreadable image, frames of different sizes,
too few frames) raises `DataError` naming the path and what was expected.
"""

import dataclasses
import fractions
import os
import re
from typing import Protocol, runtime_checkable

import av
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".y4m")
_CACHE_BYTES = 512 * 2**20  # decode a video once and keep it when it is this small
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


class DataError(ValueError):
  """Bad input data: the message names the offending path and what was expected."""


@runtime_checkable
class Sequence(Protocol):
  """An ordered list of RGB frames; `lr` optionally holds matching pre-made LR frames."""

  name: str
  lr: "Sequence | None"

  @property
  def num_frames(self) -> int: ...

  def read(self, indices) -> np.ndarray:  # (k, H, W, 3) uint8
    ...


def natural_key(name: str) -> tuple:
  """Sort key comparing digit runs as numbers: im7 < im10, `Frame 2` < `Frame 10`."""
  parts = re.split(r"(\d+)", name)
  return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts)


def natural_sorted(names) -> list:
  return sorted(names, key=natural_key)


def read_image(path: str) -> np.ndarray:
  """One image file as uint8 (H, W, 3): grayscale is repeated, alpha is dropped."""
  try:
    with Image.open(path) as im:
      mode = im.mode
      rgb = np.asarray(im.convert("RGB")) if mode in _EIGHT_BIT_MODES else None  # (H, W, 3)
  except FileNotFoundError as e:
    raise DataError(f"{path}: frame not found") from e
  except (OSError, SyntaxError, ValueError) as e:
    raise DataError(f"{path}: cannot read image ({e})") from e
  if rgb is None:
    raise DataError(f"{path}: image mode {mode!r} is not supported, expected 8-bit RGB")
  return rgb


def _check_indices(indices, num_frames: int, where: str) -> list[int]:
  indices = [int(i) for i in indices]
  bad = [i for i in indices if not 0 <= i < num_frames]
  if bad:
    raise DataError(f"{where}: frame indices {bad} out of range, expected 0..{num_frames - 1}")
  return indices


def stack_frames(frames: list, names: list, where: str, expected=None) -> np.ndarray:
  """Stacks (H, W, 3) frames, or raises naming the first frame whose size differs."""
  expected = expected or frames[0].shape
  for frame, name in zip(frames, names):
    if frame.shape != expected:
      raise DataError(
          f"{name}: frame is {frame.shape[1]}x{frame.shape[0]} but the other frames of "
          f"{where} are {expected[1]}x{expected[0]} (width x height)")
  return np.stack(frames)  # (k, H, W, 3)


class FrameFolderSequence:
  """`ROOT/<sequence>/*.png|jpg` frames in natural order (Vid4, Adobe240, Vimeo clips)."""

  def __init__(self, path: str, name: str | None = None, lr: "Sequence | None" = None,
               num_frames: int | None = None):
    if not os.path.isdir(path):
      raise DataError(f"{path}: frame folder not found")
    self.path = path
    self.name = name if name is not None else os.path.basename(os.path.normpath(path))
    self.lr = lr
    files = [f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)]
    self.files = natural_sorted(files)
    if not self.files:
      raise DataError(f"{path}: no frames found, expected files ending in {IMAGE_EXTENSIONS}")
    if num_frames is not None and len(self.files) != num_frames:
      raise DataError(f"{path}: found {len(self.files)} frames, expected {num_frames}")
    self._frame_shape = None

  @property
  def num_frames(self) -> int:
    return len(self.files)

  def read(self, indices) -> np.ndarray:
    indices = _check_indices(indices, self.num_frames, self.path)
    paths = [os.path.join(self.path, self.files[i]) for i in indices]
    frames = [read_image(p) for p in paths]
    stacked = stack_frames(frames, paths, self.path, self._frame_shape)  # (k, H, W, 3)
    self._frame_shape = stacked.shape[1:]
    return stacked

  def __repr__(self) -> str:
    return f"FrameFolderSequence({self.path!r}, {self.num_frames} frames)"


class VideoSequence:
  """A video file read through PyAV (anything FFmpeg decodes), with its frame rate
  (`frame_rate`: a Fraction, None if unknown; `fps`: a float, 0.0 if unknown).

  Videos that fit in `cache_bytes` are decoded once and kept; longer ones are decoded
  forward from the last position (restarting from the beginning for a backward read),
  keeping the most recently decoded frames, so reading windows in order is linear.
  """

  def __init__(self, path: str, name: str | None = None, cache_bytes: int = _CACHE_BYTES):
    if not os.path.isfile(path):
      raise DataError(f"{path}: video file not found")
    self.path = path
    self.name = name if name is not None else os.path.splitext(os.path.basename(path))[0]
    self.lr = None
    try:
      with av.open(path) as container:
        if not container.streams.video:
          raise DataError(f"{path}: no video stream found")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.frame_rate = fractions.Fraction(rate) if rate else None  # exact, e.g. 30000/1001
        self.fps = float(rate or 0.0)
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except av.FFmpegError as e:
      raise DataError(f"{path}: not a video PyAV can read ({e.strerror or type(e).__name__}); "
                      f"give a file that FFmpeg decodes") from e
    self._count = count
    self._cache = None
    self._cacheable = count * self.width * self.height * 3 <= cache_bytes
    self._container = None
    self._decoder = None
    self._next = 0  # index of the next frame the decoder yields
    self._recent = {}  # index -> (H, W, 3) uint8, the frames of the last read

  @property
  def num_frames(self) -> int:
    return self._count

  def __getstate__(self):
    state = self.__dict__.copy()
    state.update(_container=None, _decoder=None, _next=0, _recent={}, _cache=None)
    return state

  def _restart(self) -> None:
    self.close()
    self._container = av.open(self.path)
    self._decoder = self._container.decode(video=0)
    self._next = 0

  def _decode_next(self) -> np.ndarray:
    try:
      frame = next(self._decoder).to_ndarray(format="rgb24")  # (H, W, 3)
    except StopIteration as e:
      raise DataError(
          f"{self.path}: decoding stopped after {self._next} frames, "
          f"expected {self._count}") from e
    except av.FFmpegError as e:
      raise DataError(f"{self.path}: cannot decode frame {self._next} "
                      f"({e.strerror or type(e).__name__})") from e
    self._next += 1
    return frame

  def _decode_all(self) -> np.ndarray:
    self._restart()
    frames = [self._decode_next() for _ in range(self._count)]
    self.close()
    return stack_frames(frames, [f"{self.path} frame {i}" for i in range(self._count)],
                        self.path)  # (T, H, W, 3)

  def read(self, indices) -> np.ndarray:
    indices = _check_indices(indices, self._count, self.path)
    if self._cacheable:
      if self._cache is None:
        self._cache = self._decode_all()
      return self._cache[indices]
    wanted = set(indices) - set(self._recent)
    if wanted and (self._decoder is None or min(wanted) < self._next):
      self._restart()
    recent = {i: self._recent[i] for i in indices if i in self._recent}
    while wanted:
      i, frame = self._next, self._decode_next()
      if i in wanted:
        recent[i] = frame
        wanted.discard(i)
    self._recent = recent
    frames = [recent[i] for i in indices]
    return stack_frames(frames, [f"{self.path} frame {i}" for i in indices], self.path)

  def close(self) -> None:
    if self._container is not None:
      self._container.close()
    self._container, self._decoder = None, None

  def __repr__(self) -> str:
    return f"VideoSequence({self.path!r}, {self._count} frames at {self.fps:.3f} fps)"


@dataclasses.dataclass
class ArraySequence:
  """Frames held in memory, uint8 (T, H, W, 3)."""

  name: str
  frames: np.ndarray
  lr: "Sequence | None" = None

  def __post_init__(self):
    f = self.frames
    if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
      raise DataError(f"{self.name}: expected uint8 (T, H, W, 3) frames, got {f.dtype} {f.shape}")

  @property
  def num_frames(self) -> int:
    return self.frames.shape[0]

  def read(self, indices) -> np.ndarray:
    return self.frames[_check_indices(indices, self.num_frames, self.name)]


class FrameRange:
  """Frames [start, stop) of another sequence, re-indexed from 0 (e.g. the part of a clip that
  no training saw); `first` is the index its frame 0 has in the whole sequence."""

  def __init__(self, sequence, start: int, stop: int):
    where = getattr(sequence, "path", sequence.name)
    if not 0 <= start < stop <= sequence.num_frames:
      raise DataError(f"{where}: frames [{start}, {stop}) are not a range of its "
                      f"{sequence.num_frames} frames")
    self.sequence, self.first, self._count = sequence, int(start), int(stop - start)
    self.name, self.lr = sequence.name, None
    if getattr(sequence, "path", None) is not None:
      self.path = f"{sequence.path} frames {start}..{stop - 1}"

  @property
  def num_frames(self) -> int:
    return self._count

  def read(self, indices) -> np.ndarray:
    indices = _check_indices(indices, self._count, getattr(self, "path", self.name))
    return self.sequence.read([self.first + i for i in indices])

  def __repr__(self) -> str:
    return f"FrameRange({self.sequence!r}, {self.first}, {self.first + self._count})"


def list_sequences(root: str, names=None) -> list:
  """The sequences under `root`: each frame subfolder and each video file, natural order.

  `root` may also be a single video file or a folder of frames. `names` keeps only
  the sequences with those names, in that order.
  """
  if os.path.isfile(root):
    if not root.lower().endswith(VIDEO_EXTENSIONS):
      raise DataError(f"{root}: not a video file, expected one of {VIDEO_EXTENSIONS}")
    return [VideoSequence(root)]
  if not os.path.isdir(root):
    raise DataError(f"{root}: dataset root not found")
  entries = natural_sorted(os.listdir(root))
  if any(e.lower().endswith(IMAGE_EXTENSIONS) for e in entries):
    found = {os.path.basename(os.path.normpath(root)): root}
  else:
    found = {}
    for e in entries:
      path = os.path.join(root, e)
      if os.path.isdir(path) and any(
          f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(path)):
        found[e] = path
      elif os.path.isfile(path) and e.lower().endswith(VIDEO_EXTENSIONS):
        found[os.path.splitext(e)[0]] = path
  if not found:
    raise DataError(
        f"{root}: no sequences found, expected frame folders (*.png, *.jpg) or video files")
  if names is not None:
    missing = [n for n in names if n not in found]
    if missing:
      raise DataError(f"{root}: sequences {missing} not found (have {list(found)})")
    found = {n: found[n] for n in names}
  return [VideoSequence(p, name=n) if os.path.isfile(p) else FrameFolderSequence(p, name=n)
          for n, p in found.items()]
