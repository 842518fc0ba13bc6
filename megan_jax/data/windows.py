"""The standard STVSR evaluation windows over a long sequence.

A window is `window` (= 2n+1, default 7) consecutive GT frames whose even offsets
(0, 2, 4, 6) are the n+1 LR inputs. Windows start every `stride` (default 6) frames, so
consecutive windows share one input frame; a last window ends at the final frame.
Each frame of the sequence is scored in the first window that contains it, and only there.
"""

import dataclasses

from megan_jax.data.sources import DataError


@dataclasses.dataclass(frozen=True)
class Window:
  """Absolute frame indices of one window and which of its GT frames to score."""

  start: int
  gt_indices: tuple  # (window,) consecutive frame indices
  input_indices: tuple  # (window // 2 + 1,) = gt_indices[::2]
  scored: tuple  # (window,) bool


def stvsr_windows(num_frames: int, window: int = 7, stride: int = 6) -> list:
  """The windows covering `num_frames` frames, each frame scored exactly once."""
  if window < 1 or window % 2 == 0:
    raise ValueError(f"stvsr_windows: window must be odd and positive, got {window}")
  if not 0 < stride <= window:
    raise ValueError(f"stvsr_windows: stride must be in 1..{window}, got {stride}")
  if num_frames < window:
    raise DataError(
        f"sequence has {num_frames} frames, expected at least {window} (one window)")
  starts = list(range(0, num_frames - window + 1, stride))
  if starts[-1] + window < num_frames:
    starts.append(num_frames - window)
  windows, next_unscored = [], 0
  for start in starts:
    gt = tuple(range(start, start + window))
    scored = tuple(i >= next_unscored for i in gt)
    next_unscored = start + window
    windows.append(Window(start, gt, gt[::2], scored))
  return windows
