"""data.extra (data/mixed.py): training on your own footage. Every window of 2n+1 consecutive frames
of every sequence of every extra folder is one record, after the embedded clips' records (issue 31)."""

import os

import numpy as np
import pytest
from PIL import Image

import train_fakes
from megan_jax.data import mixed, pipeline
from megan_jax.data.sources import DataError


def _write_frames(folder: str, frames: np.ndarray) -> None:
  os.makedirs(folder)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(folder, f"frame {i + 1}.png"))


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
  """A folder of two frame folders: 'a' of 9 frames and 'b' of 7 (natural order: 'frame 10'
  would follow 'frame 9'), random 8x12 RGB; returns (root, {name: frames})."""
  root = str(tmp_path_factory.mktemp("footage"))
  rng = np.random.default_rng(0)
  clips = {"a": rng.integers(0, 256, (9, 8, 12, 3), dtype=np.uint8),
           "b": rng.integers(0, 256, (7, 8, 12, 3), dtype=np.uint8)}
  for name, frames in clips.items():
    _write_frames(os.path.join(root, name), frames)
  return root, clips


def test_every_window_of_every_sequence_is_a_record(footage):
  """'a' (9 frames) has windows starting at 0, 1, 2; 'b' (7 frames) one: 4 records, in order, each
  the 7 frames written, bit for bit."""
  root, clips = footage
  source = mixed.folder_source(root, 4)
  want = [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
  assert len(source) == len(want)
  for i, (name, start) in enumerate(want):
    record = source[i]
    np.testing.assert_array_equal(record["gt"], clips[name][start:start + 7])
    assert record["where"].endswith(f"frames {start}..{start + 6}")
  # 3 input frames: windows of 5, 5 + 3 records
  assert len(mixed.folder_source(root, 3)) == (9 - 5 + 1) + (7 - 5 + 1)
  one = mixed.folder_source(os.path.join(root, "b"), 4)  # a single frame folder
  assert len(one) == 1
  np.testing.assert_array_equal(one[0]["gt"], clips["b"])


def test_extra_folders_follow_the_embedded_clips(footage, tmp_path):
  """data.extra with a frame-folder root and a Vimeo-90K tree: the source is the embedded clip's
  windows (Carphone: 120 frames, 114 windows), then the 4 windows above, then the tree's 6 septuplets."""
  root, clips = footage
  tree = train_fakes.make_vimeo_tree(str(tmp_path / "vimeo"))
  cfg = {"name": "embedded", "clips": ("carphone_pristine",), "num_input_frames": 4,
         "extra": (root, tree)}
  source = pipeline.make_train_source(cfg)
  assert len(source) == 114 + 4 + 6
  np.testing.assert_array_equal(source[114]["gt"], clips["a"][:7])
  np.testing.assert_array_equal(source[117]["gt"], clips["b"])
  want = np.stack([np.asarray(Image.open(os.path.join(tree, "sequences", "00001", "0006",
                                                      f"im{t}.png"))) for t in range(1, 8)])
  np.testing.assert_array_equal(source[123]["gt"], want)
  assert source[113]["where"] == "carphone_pristine frames 113..119"


def test_a_short_or_missing_extra_folder_is_one_clear_error(footage, tmp_path):
  root, _ = footage
  with pytest.raises(DataError, match=r"7 frames, expected at least 9"):
    mixed.folder_source(root, 5)
  with pytest.raises(DataError, match=r"config.data.extra: .*nowhere does not exist"):
    mixed.folder_source(str(tmp_path / "nowhere"), 4)
