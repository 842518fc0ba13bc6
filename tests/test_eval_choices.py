"""What eval does with the choices a user makes (issue 31): config.final_eval after training, a chosen
non-latest checkpoint (eval.step), eval.tile as part of what a column was scored with, and eval and
infer end to end in bfloat16. Scores are checked against the checkpoint's parameters scored directly
with `evaluate_sequences`, or against the other path (infer's frames scored by hand)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import train_fakes
from megan_jax import checkpointing, evaluate, metrics, predict, train
from megan_jax.data.augment import downscale
from megan_jax.data.pipeline import open_eval_dataset
from megan_jax.infer import infer
from megan_jax.models import build_model

from configs import vimeo  # pylint: disable=wrong-import-order

TOY = train_fakes.ToyModel()


def _config(data_root, **fields):
  config = train_fakes.fast_config("tiny", data_root, **fields)
  config.model.name = "toy"
  config.eval.datasets = [train_fakes.val_spec(data_root)]  # the tree's first clip, named "val"
  config.eval.save_crops, config.eval.progress = False, False
  return config


def _scores(data_root, params, **predict_args) -> dict:
  """The mean scores of `params` (the toy model) on the val clip, scored directly."""
  sequences = open_eval_dataset(train_fakes.val_spec(data_root))
  fn = predict.make_predict_fn(TOY, params, **predict_args)
  return evaluate.evaluate_sequences(fn, sequences, progress=False)["mean"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The toy model trained 4 steps (checkpoints 2 and 4) with config.final_eval: (data_root,
  workdir, the folders of WORKDIR/eval right after training, before any test adds one). The toy
  model stands in for MEGAN in training and in evaluation."""
  data_root = train_fakes.make_vimeo_tree(str(tmp_path_factory.mktemp("vimeo")), num_clips=2)
  workdir = str(tmp_path_factory.mktemp("run"))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(predict, "build_model", lambda cfg: TOY)
    patch.setattr(evaluate, "build_model", lambda cfg: TOY)
    train.train_and_evaluate(_config(data_root, final_eval=True), workdir, model=TOY)
  evals = os.path.join(workdir, "eval")
  return data_root, workdir, sorted(os.listdir(evals)) if os.path.isdir(evals) else []


@pytest.fixture(name="toy")
def _toy(monkeypatch):
  monkeypatch.setattr(predict, "build_model", lambda cfg: TOY)
  monkeypatch.setattr(evaluate, "build_model", lambda cfg: TOY)


def _summary(workdir, step) -> dict:
  with open(os.path.join(workdir, "eval", f"step_{step}", "summary.json"), encoding="utf-8") as f:
    return json.load(f)


def test_final_eval_scores_the_last_checkpoint(run):
  """config.final_eval (the demo's train-then-evaluate step): the run ends with the table of its
  last checkpoint, whose model row is step 4's parameters scored directly."""
  data_root, workdir, written = run
  assert written == ["step_4"]
  saved = _summary(workdir, 4)
  want = _scores(data_root, checkpointing.restore_params(workdir, 4)[0])
  assert saved["summary"]["TOY"]["val"] == pytest.approx(want, rel=1e-12)


def test_eval_of_a_chosen_step_scores_that_checkpoint(run, toy):
  """eval.step=2 scores step 2 (not the latest, 4) and writes eval/step_2."""
  data_root, workdir, _ = run
  config = _config(data_root)
  config.eval.step = 2
  out = evaluate.evaluate(config, workdir)
  assert out["step"] == 2 and out["dir"] == os.path.join(workdir, "eval", "step_2")
  want = _scores(data_root, checkpointing.restore_params(workdir, 2)[0])
  assert _summary(workdir, 2)["summary"]["TOY"]["val"] == pytest.approx(want, rel=1e-12)
  assert want["psnr_y"] != _summary(workdir, 4)["summary"]["TOY"]["val"]["psnr_y"]


def test_eval_tile_is_part_of_what_a_column_was_scored_with(run, toy):
  """The step-4 column 'val' was scored on whole frames: scoring it again with eval.tile is refused
  before any work (the column is not silently replaced by tiled numbers), naming the change; under
  another name the tiled scores are a column of their own, next to the kept one."""
  data_root, workdir, _ = run
  before = _summary(workdir, 4)
  config = _config(data_root)
  config.eval.update(tile=8, tile_overlap=4)
  with pytest.raises(ValueError, match=r"the column 'val' .* was scored with other settings "
                     r"\(eval.tile None -> 8, eval.tile_overlap 16 -> 4\)"):
    evaluate.evaluate(config, workdir)
  assert _summary(workdir, 4) == before
  config.eval.datasets[0].name = "val tiled"
  evaluate.evaluate(config, workdir)
  after = _summary(workdir, 4)
  assert after["summary"]["TOY"]["val"] == before["summary"]["TOY"]["val"]
  assert after["sources"]["val tiled"]["eval.tile"] == 8
  want = _scores(data_root, checkpointing.restore_params(workdir, 4)[0], tile=8, tile_overlap=4)
  assert after["summary"]["TOY"]["val tiled"] == pytest.approx(want, rel=1e-12)


def test_eval_and_infer_of_tiny_megan_in_bfloat16_agree_end_to_end(tmp_path):
  """dtype=bfloat16 through both paths of the tiny MEGAN (random weights): eval's per-frame PSNR-Y of
  a 7-frame clip equals the PSNR-Y of infer's output frames (given eval's LR frames: MATLAB bicubic
  x1/4, as uint8 PNGs) against the GT, computed here frame by frame; both record bfloat16."""
  rng = np.random.default_rng(0)
  clip = tmp_path / "clips" / "c"
  os.makedirs(clip)
  yy, xx = np.mgrid[:32, :48]
  gt = np.stack([np.stack([(4 * xx + 6 * t) % 256, (5 * yy) % 256, np.full_like(xx, 30 * t)], -1)
                 for t in range(7)]).astype(np.uint8) // 2 + rng.integers(0, 64, (7, 32, 48, 3),
                                                                           dtype=np.uint8)
  for t, frame in enumerate(gt):
    Image.fromarray(frame).save(clip / f"{t}.png")
  lr_dir = tmp_path / "lr"
  os.makedirs(lr_dir)
  for t, frame in enumerate(downscale(gt[::2])):  # (4, 8, 12, 3): the LR frames eval feeds
    Image.fromarray(frame).save(lr_dir / f"{t}.png")

  config = vimeo.get_config("tiny")
  config.eval.update(folders=str(tmp_path / "clips"), dtype="bfloat16", progress=False,
                     save_crops=False)
  config.infer.update(input=str(lr_dir), output=str(tmp_path / "out"), dtype="bfloat16",
                      progress=False)
  workdir = str(tmp_path / "workdir")
  train_fakes.save_random_params(workdir, build_model(config.model), (1, 4, 8, 12, 3))

  out = evaluate.evaluate(config, workdir)
  scored = out["results"]["clips"]["MEGAN"]["clips"][0]["frames"]
  assert _summary(workdir, 3)["sources"]["clips"]["eval.dtype"] == "bfloat16"
  infer(config, workdir)
  frames = [np.asarray(Image.open(tmp_path / "out" / name))
            for name in sorted(os.listdir(tmp_path / "out"))]
  assert len(frames) == 7 and frames[0].shape == (32, 48, 3)
  by_hand = [metrics.psnr_y(f, g) for f, g in zip(frames, gt)]
  assert [f["index"] for f in scored] == list(range(7))
  np.testing.assert_allclose([f["psnr_y"] for f in scored], by_hand, rtol=1e-12)
  assert np.isfinite(by_hand).all() and len(set(np.round(by_hand, 6))) > 1
