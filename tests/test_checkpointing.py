"""Checkpoints: retention (last N + best), the data position, atomicity, restore errors."""

import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fakes
from megan_jax import checkpointing, evaluate, logging_utils, predict, train
from megan_jax.data.pipeline import open_eval_dataset


def _dataset():
  return grain.MapDataset.range(40).shuffle(seed=3).batch(4).to_iter_dataset()


def _state(value: float) -> dict:
  return {"step": jnp.int32(0), "params": {"w": jnp.full((3,), value)}, "opt_state": (jnp.zeros(2),)}


def test_keeps_last_n_plus_best(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), keep=2)
  it = iter(_dataset())
  scores = {2: 30.0, 4: 35.0, 6: 31.0}  # validation PSNR-Y at some steps
  for step in range(1, 9):
    next(it)
    metrics = {checkpointing.BEST_METRIC: scores[step]} if step in scores else None
    checkpointing.save(manager, step, _state(step), it, metrics)
  manager.wait_until_finished()
  assert manager.all_steps() == [4, 7, 8]  # the best (35 dB at step 4) and the last two
  assert checkpointing.best_step(str(tmp_path)) == 4
  params, step = checkpointing.restore_params(str(tmp_path))
  assert step == 8 and np.asarray(params["w"]).tolist() == [8.0] * 3
  assert np.asarray(checkpointing.restore_params(str(tmp_path), 4)[0]["w"]).tolist() == [4.0] * 3


def test_restore_rewinds_the_data_iterator(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path))
  it = iter(_dataset())
  for _ in range(3):
    next(it)
  checkpointing.save(manager, 3, _state(1.0), it)
  manager.wait_until_finished()
  reference = iter(_dataset())
  want = [next(reference) for _ in range(5)][3:]  # batches 4 and 5 of an uninterrupted pass
  fresh = iter(_dataset())
  restored, step, params_only = checkpointing.restore(checkpointing.make_manager(str(tmp_path)),
                                                      jax.eval_shape(lambda: _state(0.0)), fresh)
  assert step == 3 and not params_only
  assert np.asarray(restored["params"]["w"]).tolist() == [1.0] * 3
  np.testing.assert_array_equal(next(fresh), want[0])
  np.testing.assert_array_equal(next(fresh), want[1])


def test_unfinished_save_is_ignored_and_cleaned(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path))
  checkpointing.save(manager, 5, _state(5.0), iter(_dataset()))
  manager.wait_until_finished()
  manager.close()
  partial = os.path.join(checkpointing.checkpoint_dir(str(tmp_path)), "9.orbax-checkpoint-tmp-123")
  os.makedirs(os.path.join(partial, "state"))  # a save killed half-way
  assert checkpointing.restore_params(str(tmp_path))[1] == 5
  manager = checkpointing.make_manager(str(tmp_path))  # a resumed run: cleans up by its first save
  assert manager.latest_step() == 5
  checkpointing.save(manager, 6, _state(6.0), iter(_dataset()))
  manager.wait_until_finished()
  assert manager.all_steps() == [5, 6]
  assert not os.path.exists(partial)


def test_restore_params_errors_name_the_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"no checkpoint in workdir '{tmp_path}'"):
    checkpointing.restore_params(str(tmp_path))
  manager = checkpointing.make_manager(str(tmp_path))
  checkpointing.save(manager, 2, _state(2.0), iter(_dataset()))
  manager.wait_until_finished()
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 7 .*available: \[2\]"):
    checkpointing.restore_params(str(tmp_path), 7)


def test_validation_during_training_keeps_the_best(tmp_path):
  root = train_fakes.make_vimeo_tree(str(tmp_path / "vimeo"), num_clips=4)
  config = train_fakes.fast_config("tiny", root, num_steps=6, checkpoint_every=1,
                                   keep_checkpoints=1, eval_every=2, optimizer__lr=3e-3)
  config.val.update(dict(root=root, list_file="sep_trainlist.txt", max_clips=2))
  train.train_and_evaluate(config, str(tmp_path / "run"), model=train_fakes.ToyModel())
  val = {r["step"]: r["val_psnr_y"] for r in logging_utils.read_jsonl(str(tmp_path / "run"))
         if "val_psnr_y" in r}
  assert sorted(val) == [2, 4, 6]
  assert len(set(val.values())) == 3  # each validation saw the current parameters
  best = max(val, key=val.get)
  assert checkpointing.best_step(str(tmp_path / "run")) == best
  assert checkpointing.make_manager(str(tmp_path / "run")).all_steps() == sorted({best, 6})
  # The logged value of each kept step is its parameters' PSNR-Y on the first 2 clips (max_clips),
  # scored here directly (was 10 < x < 60, issue 31).
  sequences = open_eval_dataset(config.val)[:2]
  assert len(open_eval_dataset(config.val)) == 4
  for step in sorted({best, 6}):
    params = checkpointing.restore_params(str(tmp_path / "run"), step)[0]
    fn = predict.make_predict_fn(train_fakes.ToyModel(), params)
    want = evaluate.evaluate_sequences(fn, sequences, progress=False)["mean"]["psnr_y"]
    assert val[step] == pytest.approx(want, rel=1e-12), step


def test_keep_zero_still_keeps_the_newest(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), keep=0)
  it = iter(_dataset())
  for step in (1, 2, 3):
    checkpointing.save(manager, step, _state(step), it)
  manager.wait_until_finished()
  assert manager.all_steps() == [3]
  assert np.asarray(checkpointing.restore_params(str(tmp_path))[0]["w"]).tolist() == [3.0] * 3
