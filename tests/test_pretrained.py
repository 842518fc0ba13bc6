"""Parameter files: export, config.pretrained, the packaged model, and what validation logs."""

import os
import sys

import jax
import numpy as np
import pytest

import train_fakes
from megan_jax import checkpointing, evaluate, logging_utils, predict, pretrained, train
from megan_jax.data.embedded import load_clip
from megan_jax.data.sources import ArraySequence
from megan_jax.models import build_model

PACKAGED_MARGIN_DB = 1.6  # measured: +1.72 dB on these 13 frames (docs/BENCHMARKS.md, round five)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_fakes.make_vimeo_tree(str(tmp_path_factory.mktemp("vimeo")))


def _config(data_root, **fields):
  config = train_fakes.fast_config("tiny", data_root, **fields)
  config.val = train_fakes.val_spec(data_root)
  config.eval.datasets = [config.val]
  config.eval.save_crops, config.eval.progress = False, False
  return config


def test_file_round_trip_keeps_every_array(tmp_path):
  params = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
            "b": {"c": {"bias": np.float32([1.5, -2])}}}
  path = str(tmp_path / "p.npz")
  pretrained.save(path, params, {"steps": 7})
  got, meta = pretrained.load(path)
  assert meta["steps"] == 7 and "date" in meta
  with np.load(path) as f:  # the documented layout: '/'-joined paths
    assert sorted(f.files) == ["__meta__", "a/kernel", "b/c/bias"]
  assert jax.tree.structure(got) == jax.tree.structure(params)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, y)


def test_bad_names_and_files_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="neither a packaged parameter set"):
    pretrained.load("no_such_set")
  with pytest.raises(FileNotFoundError, match="config.pretrained: .*missing.npz does not exist"):
    pretrained.load(str(tmp_path / "missing.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="junk.npz is not a parameter file"):
    pretrained.load(str(tmp_path / "junk.npz"))


def test_export_then_start_a_run_from_it_and_score_both(data_root, tmp_path, monkeypatch, capsys):
  """Train 4 steps, export; a new workdir started from the file fine-tunes it, and its evaluation
  scores the exported parameters as a row of their own, equal to scoring them directly."""
  toy = train_fakes.ToyModel()
  monkeypatch.setattr(predict, "build_model", lambda cfg: toy)
  monkeypatch.setattr(evaluate, "build_model", lambda cfg: toy)
  config = _config(data_root)
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  train.train_and_evaluate(config, first, toy)
  config.export.output = str(tmp_path / "exported.npz")
  assert pretrained.export(config, first, "configs/vimeo.py:tiny") == config.export.output
  exported, meta = pretrained.load(config.export.output)
  want, _ = checkpointing.restore_params(first)
  for x, y in zip(jax.tree.leaves(exported), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(x, np.asarray(y))
  assert meta["steps"] == 4 and meta["config_file"] == "configs/vimeo.py:tiny"

  config.pretrained = config.export.output
  toy_params = pretrained.expected_params(config, toy)
  pretrained.start_workdir(config, second, toy_params)
  assert "starting" in capsys.readouterr().out
  assert checkpointing.make_manager(second, create=False).all_steps() == [0]
  pretrained.start_workdir(config, second, toy_params)  # a workdir with checkpoints: left as it is
  train.train_and_evaluate(config, second, toy)
  out = evaluate.evaluate(config, second)
  assert list(out["summary"]) == ["MEGAN", "MEGAN (exported)", evaluate.BASELINE]
  direct = evaluate.evaluate_sequences(predict.make_predict_fn(toy, exported),
                                       evaluate.open_eval_dataset(config.val), progress=False)
  name = evaluate.dataset_name(config.val)
  assert out["summary"]["MEGAN (exported)"][name] == direct["mean"]
  assert out["summary"]["MEGAN"][name] != direct["mean"]  # fine-tuned 4 more steps
  config.export.output = str(tmp_path / "again.npz")
  _, again = pretrained.load(pretrained.export(config, second, "configs/vimeo.py:tiny"))
  assert again["steps"] == 4 and again["started_from"]["name"] == str(tmp_path / "exported.npz")
  assert again["started_from"]["steps"] == 4 and "model" not in again["started_from"]


def test_validation_logs_the_baseline_and_crops(data_root, tmp_path):
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  config = _config(data_root, eval_every=2)
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(config, workdir, train_fakes.ToyModel())
  val = [r for r in logging_utils.read_jsonl(workdir) if "val_psnr_y" in r]
  assert [r["step"] for r in val] == [2, 4]
  base = evaluate.evaluate_sequences(evaluate.baseline_predict_fn,
                                     evaluate.open_eval_dataset(config.val)[:1], progress=False)["mean"]
  for r in val:
    assert r["val_baseline_psnr_y"] == pytest.approx(base["psnr_y"])
    assert r["val_baseline_ssim_y"] == pytest.approx(base["ssim_y"])
  tb_dir = os.path.join(workdir, logging_utils.TENSORBOARD_DIR)
  images = {}
  for name in os.listdir(tb_dir):
    with open(os.path.join(tb_dir, name), "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      length = int.from_bytes(data[offset:offset + 8], "little")
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      for v in event.summary.value:
        if v.HasField("image"):
          images[(v.tag, event.step)] = (v.image.height, v.image.width)
  seq = evaluate.open_eval_dataset(config.val)[0]
  gt_h, gt_w = seq.read([0]).shape[1:3]
  crop = min(128, gt_h), min(128, gt_w)  # 4 panels (LR, model, baseline, GT), zoom 2, gaps of 4
  want = (4 * 16 + 2 * crop[0], 4 * 2 * crop[1] + 3 * 4)  # 16 px lines: caption (2), names, PSNR-Y
  assert images == {("val/LR_model_baseline_GT", 2): want, ("val/LR_model_baseline_GT", 4): want}


def test_packaged_model_beats_bicubic_on_held_out_carphone():
  """The shipped demo_small parameters, in the current demo architecture, on Carphone's first
  13 frames (never trained on): ahead of bicubic + blending."""
  sys.path.insert(0, train_fakes.REPO)
  from configs import demo  # pylint: disable=import-outside-toplevel
  params, meta = pretrained.load("demo_small")
  seq = [ArraySequence("carphone", load_clip("carphone_pristine")[:13])]
  model = evaluate.evaluate_sequences(
      predict.make_predict_fn(build_model(demo.get_config().model), params), seq,
      progress=False)["mean"]["psnr_y"]
  base = evaluate.evaluate_sequences(evaluate.baseline_predict_fn, seq, progress=False)["mean"]
  assert model > base["psnr_y"] + PACKAGED_MARGIN_DB, (model, base, meta)


def test_a_run_names_the_packaged_parameters_only_when_it_holds_them_unchanged(tmp_path):
  sys.path.insert(0, train_fakes.REPO)
  from configs import demo  # pylint: disable=import-outside-toplevel
  config, workdir = demo.get_config(), str(tmp_path)
  pretrained.start_workdir(config, workdir, announce=False)
  params, step = checkpointing.restore_params(workdir)
  where = f"step 0 in {os.path.join(workdir, 'checkpoints')}"
  assert pretrained.describe_checkpoint(config, workdir, params, step) == (
      "the parameters demo_small (6000 steps of configs/pretrain.py, then 5000 of "
      "configs/pretrain_more.py, then 5000 of configs/pretrain_downscaled.py), "
      f"{where}")
  leaves, tree = jax.tree_util.tree_flatten(params)
  leaves[-1] = np.asarray(leaves[-1]) + 1e-3  # one array changed
  params = jax.tree_util.tree_unflatten(tree, leaves)
  assert pretrained.describe_checkpoint(config, workdir, params, step) == f"the parameters of {where}"
