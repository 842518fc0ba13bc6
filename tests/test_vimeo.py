"""The Vimeo-90K septuplet reader on a small tree in the official layout, built here."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from megan_jax.data import vimeo
from megan_jax.data.imresize import imresize_np
from megan_jax.data.pipeline import iter_eval_windows, open_eval_dataset
from megan_jax.data.sources import DataError

CLIPS = ["00001/0001", "00001/0002", "00002/0010"]
H, W = 32, 48


def _clip_frames(k, h=H, w=W):
  return np.random.default_rng(k).integers(0, 256, (7, h, w, 3), dtype=np.uint8)


def _write_tree(root, clips, h=H, w=W):
  for k, clip in enumerate(clips):
    path = os.path.join(root, "sequences", clip)
    os.makedirs(path)
    for i, frame in enumerate(_clip_frames(k, h, w)):
      Image.fromarray(frame).save(os.path.join(path, f"im{i + 1}.png"))


@pytest.fixture
def tree(tmp_path):
  root = str(tmp_path / "vimeo_septuplet")
  _write_tree(root, CLIPS)
  # no trailing newline, a blank line inside
  with open(os.path.join(root, "sep_trainlist.txt"), "w") as f:
    f.write("00001/0001\n\n00001/0002\n00002/0010")
  with open(os.path.join(root, "sep_testlist.txt"), "w") as f:
    f.write("00002/0010\n")
  return root


def _reference_lr(gt):
  return np.clip(np.floor(imresize_np(gt, 0.25) + 0.5), 0, 255).astype(np.uint8)


def test_list_parsing(tree):
  data = vimeo.VimeoSeptuplet(tree, "sep_trainlist.txt")
  assert data.clips == ["00001/0001", "00001/0002", "00002/0010"]
  assert vimeo.VimeoSeptuplet(tree, os.path.join(tree, "sep_testlist.txt")).clips == ["00002/0010"]


def test_record_is_the_full_gt_clip(tree):
  data = vimeo.VimeoSeptuplet(tree, "sep_trainlist.txt")
  assert len(data) == 3
  rec = data[2]
  np.testing.assert_array_equal(rec["gt"], _clip_frames(2))
  assert "lr" not in rec  # computed by the pipeline on its crop (test_pipeline.py)
  assert rec["where"].endswith(os.path.join("sequences", "00002", "0010"))


def test_lr_tree_mode_reads_the_premade_frames(tree, tmp_path):
  lr_root = str(tmp_path / "lr")
  _write_tree(lr_root, CLIPS, H // 4, W // 4)  # LR tree: its own (arbitrary) content
  data = vimeo.VimeoSeptuplet(tree, "sep_trainlist.txt", lr_root=lr_root)
  rec = data[1]
  np.testing.assert_array_equal(rec["lr"], _clip_frames(1, H // 4, W // 4)[[0, 2, 4, 6]])
  np.testing.assert_array_equal(rec["gt"], _clip_frames(1))
  # the LR tree may also be given as its sequences/ folder (as Zooming Slow-Mo configs do)
  data = vimeo.VimeoSeptuplet(tree, "sep_trainlist.txt", lr_root=os.path.join(lr_root, "sequences"))
  np.testing.assert_array_equal(data[1]["lr"], rec["lr"])
  spec = ml_collections.ConfigDict(
      {"kind": "vimeo", "root": tree, "list_file": "sep_testlist.txt", "lr_root": lr_root})
  (seq,) = open_eval_dataset(spec)
  (window,) = iter_eval_windows(seq)
  np.testing.assert_array_equal(np.round(window["lr"] * 255), _clip_frames(2, H // 4, W // 4)[::2])


def test_test_sample_is_the_whole_clip(tree):
  spec = ml_collections.ConfigDict({"kind": "vimeo", "root": tree, "list_file": "sep_testlist.txt"})
  (seq,) = open_eval_dataset(spec)
  assert seq.name == "00002/0010" and seq.num_frames == 7
  (window,) = iter_eval_windows(seq)
  gt = _clip_frames(2)
  np.testing.assert_array_equal(window["gt"], gt)
  np.testing.assert_array_equal(np.round(window["lr"] * 255).astype(np.uint8),
                                _reference_lr(gt[::2]))
  assert window["scored"] == (True,) * 7 and window["input_indices"] == (0, 2, 4, 6)


def test_named_subsets_ship_with_the_package():
  # sizes from the data README: 1,225 / 4,977 / 1,613 motion-split clips, 7,824 / 64,612
  sizes = {"fast": 1225, "medium": 4977, "slow": 1613, "test": 7824, "train": 64612}
  lists = {name: vimeo.read_list(name) for name in sizes}
  assert {name: len(v) for name, v in lists.items()} == sizes
  subsets = set(lists["fast"]) | set(lists["medium"]) | set(lists["slow"])
  assert len(subsets) == 7815 and subsets <= set(lists["test"])
  assert lists["fast"][0] == "00001/0625" and lists["train"][0] == "00001/0001"


def test_subsets_select_clips_of_the_tree(tree):
  with open(os.path.join(tree, "subset.txt"), "w") as f:
    f.write("00002/0010\n00001/0001\n")
  data = vimeo.VimeoSeptuplet(tree, "subset.txt")
  assert data.clips == ["00002/0010", "00001/0001"]
  np.testing.assert_array_equal(data[0]["gt"], _clip_frames(2))
  # a named list is checked against the tree up front: here 1,225 fast clips are missing
  with pytest.raises(DataError, match="1225 GT clip folders.*00001.0625"):
    vimeo.VimeoSeptuplet(tree, "fast")


def test_missing_root_list_clip_and_frame(tree, tmp_path):
  with pytest.raises(DataError, match="nowhere.*root not found"):
    vimeo.VimeoSeptuplet(str(tmp_path / "nowhere"), "sep_trainlist.txt")
  with pytest.raises(DataError, match="absent.txt.*list file not found"):
    vimeo.VimeoSeptuplet(tree, "absent.txt")
  with open(os.path.join(tree, "empty.txt"), "w") as f:
    f.write("\n\n")
  with pytest.raises(DataError, match="empty.txt.*empty"):
    vimeo.VimeoSeptuplet(tree, "empty.txt")
  with open(os.path.join(tree, "extra.txt"), "w") as f:
    f.write("00001/0001\n00009/0009\n")
  with pytest.raises(DataError, match="00009/0009"):
    vimeo.VimeoSeptuplet(tree, "extra.txt")
  with pytest.raises(DataError, match="lr_root.*LR root not found"):
    vimeo.VimeoSeptuplet(tree, "sep_trainlist.txt", lr_root=str(tmp_path / "lr_root"))
  os.makedirs(tmp_path / "lr_root" / "sequences")
  with pytest.raises(DataError, match="3 LR clip folders.*00001/0001"):
    vimeo.VimeoSeptuplet(tree, "sep_trainlist.txt", lr_root=str(tmp_path / "lr_root"))
  os.remove(os.path.join(tree, "sequences", "00001", "0002", "im5.png"))
  data = vimeo.VimeoSeptuplet(tree, "sep_trainlist.txt")
  with pytest.raises(DataError, match=r"0002.im5.png.*not found"):
    data[1]
  with open(os.path.join(tree, "sequences", "00001", "0001", "im3.png"), "wb") as f:
    f.write(b"garbage")
  with pytest.raises(DataError, match=r"0001.im3.png.*cannot read"):
    data[0]


def test_frames_of_different_sizes_in_a_clip(tree):
  path = os.path.join(tree, "sequences", "00001", "0002", "im6.png")
  Image.fromarray(np.zeros((H, W + 4, 3), np.uint8)).save(path)
  with pytest.raises(DataError, match=r"im6.png.*52x32.*48x32"):
    vimeo.VimeoSeptuplet(tree, "sep_trainlist.txt")[1]


def test_grayscale_and_rgba_frames_are_converted(tree):
  path = os.path.join(tree, "sequences", "00001", "0001")
  gt = _clip_frames(0)
  Image.fromarray(gt[0, ..., 1], "L").save(os.path.join(path, "im1.png"))
  rgba = np.concatenate([gt[1], np.full((H, W, 1), 9, np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(os.path.join(path, "im2.png"))
  rec = vimeo.VimeoSeptuplet(tree, "sep_trainlist.txt")[0]
  np.testing.assert_array_equal(rec["gt"][0], np.repeat(gt[0, ..., 1:2], 3, -1))
  np.testing.assert_array_equal(rec["gt"][1], gt[1])
