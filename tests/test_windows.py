"""The STVSR evaluation windows: 7 consecutive frames, inputs at offsets 0, 2, 4, 6,
every frame of the sequence scored exactly once."""

import collections

import pytest

from megan_jax.data.sources import DataError
from megan_jax.data.windows import stvsr_windows

# Window starts derived by hand: every 6 frames, plus a tail window ending at the last frame.
EXPECTED_STARTS = {
    7: [0],
    8: [0, 1],
    13: [0, 6],
    34: [0, 6, 12, 18, 24, 27],
    41: [0, 6, 12, 18, 24, 30, 34],
    49: [0, 6, 12, 18, 24, 30, 36, 42],
}


@pytest.mark.parametrize("num_frames", sorted(EXPECTED_STARTS))
def test_windows_cover_every_frame_once(num_frames):
  windows = stvsr_windows(num_frames)
  assert [w.start for w in windows] == EXPECTED_STARTS[num_frames]
  scored = collections.Counter()
  for w in windows:
    assert w.gt_indices == tuple(range(w.start, w.start + 7))
    assert w.input_indices == tuple(w.start + k for k in (0, 2, 4, 6))
    assert len(w.scored) == 7
    scored.update(i for i, s in zip(w.gt_indices, w.scored) if s)
  assert windows[-1].gt_indices[-1] == num_frames - 1
  assert scored == collections.Counter(range(num_frames))


def test_tail_window_scores_only_new_frames():
  # 8 frames: window [0..6] scores all, the tail window [1..7] only frame 7.
  first, tail = stvsr_windows(8)
  assert first.scored == (True,) * 7
  assert tail.scored == (False,) * 6 + (True,)


def test_shared_boundary_frame_is_scored_in_the_first_window():
  first, second = stvsr_windows(13)
  assert first.gt_indices[-1] == second.gt_indices[0] == 6
  assert first.scored[-1] and not second.scored[0]


def test_other_window_sizes():
  windows = stvsr_windows(12, window=5, stride=4)  # 3 input frames
  assert [w.gt_indices for w in windows] == [(0, 1, 2, 3, 4), (4, 5, 6, 7, 8), (7, 8, 9, 10, 11)]
  assert [w.input_indices for w in windows] == [(0, 2, 4), (4, 6, 8), (7, 9, 11)]


@pytest.mark.parametrize("num_frames", range(7))
def test_too_short_sequence_raises(num_frames):
  with pytest.raises(DataError, match="at least 7"):
    stvsr_windows(num_frames)


def test_bad_window_arguments():
  with pytest.raises(ValueError, match="odd"):
    stvsr_windows(20, window=6)
  with pytest.raises(ValueError, match="stride"):
    stvsr_windows(20, stride=8)
