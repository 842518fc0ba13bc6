"""evaluate: the STVSR protocol against explicit loops, every frame once, table, JSON, end to end."""

import json
import os
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from megan_jax import checkpointing, metrics, report
from megan_jax.baseline import bicubic_blend_np
from megan_jax.data.imresize import imresize_np
from megan_jax.data.pipeline import open_eval_dataset
from megan_jax.evaluate import (BASELINE, baseline_predict_fn, dataset_name, evaluate,
                                evaluate_sequences)
from megan_jax.models import build_model

from configs import vimeo  # pylint: disable=wrong-import-order

CLIPS = {"clip2": (9, 50, 66), "clip10": (13, 44, 60)}  # name: (frames, H, W); natural order 2 < 10


def _frames(num, h, w, seed):
  """Smooth moving pattern plus noise, uint8 (num, h, w, 3)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  frames = [np.stack([128 + 100 * np.sin((xx + 2 * t) / 5 + c) * np.cos((yy - t) / 7)
                      for c in range(3)], -1) + rng.normal(0, 4, (h, w, 3)) for t in range(num)]
  return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _write_folder(root, clips, seed=0):
  for i, (name, (num, h, w)) in enumerate(clips.items()):
    os.makedirs(root / name)
    for t, frame in enumerate(_frames(num, h, w, seed + i)):
      Image.fromarray(frame).save(root / name / f"{t:03d}.png")
  return str(root)


def _reference(root, name):
  """Baseline scores of one clip by explicit loops: {frame index: (psnr_y, ssim_y, psnr_rgb)}."""
  files = sorted(os.listdir(os.path.join(root, name)))
  gt = np.stack([np.asarray(Image.open(os.path.join(root, name, f))) for f in files])
  num, h, w = gt.shape[:3]
  gt = gt[:, :h - h % 4, :w - w % 4]  # modcrop 4
  starts = list(range(0, num - 6, 6))
  if starts[-1] + 7 < num:
    starts.append(num - 7)  # the tail window ends at the final frame
  scores = {}
  for s in starts:
    lr = np.clip(np.floor(imresize_np(gt[s:s + 7:2], 1 / 4) + 0.5), 0, 255)  # MATLAB uint8
    out = bicubic_blend_np(lr.astype(np.float32) / np.float32(255))  # float32 LR, as fed to models
    for k in range(7):
      if s + k not in scores:
        pred = np.clip(np.rint(out[k] * 255), 0, 255).astype(np.uint8)
        scores[s + k] = (metrics.psnr_y(pred, gt[s + k]), metrics.ssim_y(pred, gt[s + k]),
                         metrics.psnr_rgb(pred, gt[s + k]))
  return scores


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return _write_folder(tmp_path_factory.mktemp("folders"), CLIPS)


def _spec(**kw):
  return ml_collections.ConfigDict(kw)


def test_baseline_reproduces_explicit_loops(folder):
  seqs = open_eval_dataset(_spec(kind="folders", root=folder))
  res = evaluate_sequences(baseline_predict_fn, seqs, progress=False)
  assert [c["name"] for c in res["clips"]] == ["clip2", "clip10"]
  clip_means = []
  for clip in res["clips"]:
    ref = _reference(folder, clip["name"])
    assert [f["index"] for f in clip["frames"]] == list(range(CLIPS[clip["name"]][0]))
    for f in clip["frames"]:
      np.testing.assert_allclose([f["psnr_y"], f["ssim_y"], f["psnr_rgb"]], ref[f["index"]],
                                 rtol=1e-12)
    ref_mean = np.mean(list(ref.values()), axis=0)
    np.testing.assert_allclose([clip["mean"][k] for k in ("psnr_y", "ssim_y", "psnr_rgb")],
                               ref_mean, rtol=1e-12)
    clip_means.append(ref_mean)
  np.testing.assert_allclose([res["mean"][k] for k in ("psnr_y", "ssim_y", "psnr_rgb")],
                             np.mean(clip_means, axis=0), rtol=1e-12)
  assert res["num_clips"] == 2 and res["num_frames"] == 22
  assert 20 < res["mean"]["psnr_y"] < 60 and 0 < res["mean"]["ssim_y"] < 1


def test_every_frame_scored_once_and_batching(folder):
  seqs = open_eval_dataset(_spec(kind="folders", root=folder))
  calls = []

  def counting(lr):
    calls.append(lr.shape)
    return baseline_predict_fn(lr)

  one = evaluate_sequences(counting, seqs, progress=False)
  # clip2 (9 frames): windows at 0 and the tail at 2; clip10 (13 frames): windows at 0 and 6.
  assert calls == [(1, 4, 12, 16, 3)] * 2 + [(1, 4, 11, 15, 3)] * 2
  calls.clear()
  batched = evaluate_sequences(counting, seqs, batch_size=3, progress=False)
  assert calls == [(2, 4, 12, 16, 3), (2, 4, 11, 15, 3)]  # batches never mix frame sizes
  assert batched == one
  assert sum(len(c["frames"]) for c in one["clips"]) == one["num_frames"]


def test_vimeo_clips_are_one_window_all_scored(tmp_path):
  for i, clip in enumerate(["00001/0001", "00002/0003"]):
    os.makedirs(tmp_path / "sequences" / clip)
    for t, frame in enumerate(_frames(7, 32, 48, i)):
      Image.fromarray(frame).save(tmp_path / "sequences" / clip / f"im{t + 1}.png")
  (tmp_path / "list.txt").write_text("00001/0001\n00002/0003\n")
  seqs = open_eval_dataset(_spec(kind="vimeo", root=str(tmp_path), list_file=str(tmp_path / "list.txt")))
  calls = []
  res = evaluate_sequences(lambda lr: calls.append(1) or baseline_predict_fn(lr), seqs,
                           progress=False, max_clips=1)
  assert len(calls) == 1 and res["num_clips"] == 1
  assert [f["index"] for f in res["clips"][0]["frames"]] == list(range(7))
  ref = _reference(str(tmp_path / "sequences" / "00001"), "0001")
  np.testing.assert_allclose(res["clips"][0]["mean"]["psnr_y"],
                             np.mean([v[0] for v in ref.values()]), rtol=1e-12)


def test_progress_bar_rate_starts_after_the_first_batch(folder, capsys):
  """A 9-frame clip is two windows (7 frames scored, then 2): the first call sleeps like a compile."""
  seqs = open_eval_dataset(_spec(kind="folders", root=folder))[:1]
  calls = []

  def slow_first(lr):
    if not calls:
      time.sleep(3.0)
    calls.append(1)
    return baseline_predict_fn(lr)

  evaluate_sequences(slow_first, seqs, desc="Tiny", progress=True)
  err = capsys.readouterr().err
  final = re.findall(r"Tiny: 100%\|.*\| 9/9 \[[^,]*, *([\d.]+)frame/s\]", err)
  assert len(calls) == 2 and final, err
  assert float(final[-1]) > 3.0  # counting the first call, the rate would be below 9 frames / 3 s


def test_short_clip_is_a_clear_error(tmp_path):
  root = _write_folder(tmp_path, {"short": (5, 16, 16)})
  with pytest.raises(ValueError, match="short.*at least 7"):
    evaluate_sequences(baseline_predict_fn, open_eval_dataset(_spec(kind="folders", root=root)),
                       progress=False)


def test_table_rows_and_columns():
  summary = {"MEGAN": {"Vid4": {"psnr_y": 26.0123, "ssim_y": 0.79876},
                       "Vimeo-Fast": {"psnr_y": 36.5, "ssim_y": 0.93}},
             BASELINE: {"Vid4": {"psnr_y": 21.5, "ssim_y": 0.5}}}
  lines = report.results_table(summary).splitlines()
  assert lines[0].split() == ["Method", "Vid4", "Vimeo-Fast"]
  assert lines[2].split() == ["MEGAN", "26.01/0.7988", "36.50/0.9300"]
  assert lines[3].split() == [BASELINE, "21.50/0.5000", "-"]
  md = report.results_table(summary, markdown=True).splitlines()
  assert md[0] == "| Method | Vid4 | Vimeo-Fast |"
  assert md[2] == "| MEGAN | 26.01/0.7988 | 36.50/0.9300 |"
  assert md[3] == f"| {BASELINE} | 21.50/0.5000 | - |"


def _checkpoint(workdir, model_cfg):
  model = build_model(model_cfg)
  keys = {"params": jax.random.key(0), "lmga": jax.random.key(1)}
  shapes = jax.eval_shape(lambda: model.init(keys, jnp.zeros((1, 4, 16, 16, 3)), train=False))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype),
                        shapes["params"])
  manager = checkpointing.make_manager(workdir, async_save=False)
  manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
  manager.wait_until_finished()
  manager.close()


def test_evaluate_end_to_end(tmp_path, capsys):
  root = _write_folder(tmp_path / "data", {"a": (7, 120, 184)})  # LR 30x46, as in test_infer
  workdir = str(tmp_path / "workdir")
  config = vimeo.get_config("tiny")
  config.eval.datasets = [_spec(kind="folders", root=root, name="Tiny")]
  config.eval.save_frames, config.eval.progress = True, False
  with pytest.raises(FileNotFoundError, match="workdir"):
    evaluate(config, workdir)
  _checkpoint(workdir, config.model)
  out = evaluate(config, workdir)

  assert out["step"] == 7 and out["dir"] == os.path.join(workdir, "eval", "step_7")
  assert list(out["summary"]) == ["MEGAN", BASELINE]
  printed = capsys.readouterr().out
  assert "Tiny" in printed and "MEGAN" in printed and BASELINE in printed
  named = re.findall(r"^wrote (\S+) ", printed, re.MULTILINE)  # everything written is named
  tiny = os.path.join(out["dir"], "Tiny")
  on_disk = [os.path.join(tiny, name) for name in os.listdir(tiny)]
  on_disk += [os.path.join(out["dir"], name) for name in os.listdir(out["dir"]) if name != "Tiny"]
  assert sorted(named) == sorted(on_disk)
  with open(os.path.join(out["dir"], "table.md")) as f:
    md = f.read().splitlines()
  assert md[0] == "| Method | Tiny |" and md[2].startswith("| MEGAN | ") and len(md) == 4
  with open(os.path.join(out["dir"], "Tiny", "Bicubic_blending.json")) as f:
    saved = json.load(f)
  ref = _reference(root, "a")
  assert [fr["index"] for fr in saved["clips"][0]["frames"]] == list(range(7))
  assert [fr["interpolated"] for fr in saved["clips"][0]["frames"]] == [
      k % 2 == 1 for k in range(7)]
  np.testing.assert_allclose(saved["mean"]["psnr_y"], np.mean([v[0] for v in ref.values()]),
                             rtol=1e-12)
  with open(os.path.join(out["dir"], "Tiny", "MEGAN.json")) as f:
    model_scores = json.load(f)
  assert len(model_scores["clips"][0]["frames"]) == 7
  assert np.isfinite(model_scores["mean"]["psnr_y"])
  with open(os.path.join(out["dir"], "summary.json")) as f:
    assert set(json.load(f)["summary"]) == {"MEGAN", BASELINE}
  frames_dir = os.path.join(out["dir"], "Tiny", "MEGAN", "a")
  assert sorted(os.listdir(frames_dir)) == [f"{i:05d}.png" for i in range(7)]
  with Image.open(os.path.join(out["dir"], "Tiny", "comparison.png")) as im:
    assert im.size[0] > 4 * 128  # LR | baseline | model | GT crops side by side
  with Image.open(os.path.join(out["dir"], "Tiny", "psnr_y_per_frame.png")) as im:
    assert im.format == "PNG"


def test_dataset_names():
  assert dataset_name(_spec(kind="vimeo", root="/d/vimeo", list_file="fast")) == "Vimeo-Fast"
  assert dataset_name(_spec(kind="folders", root="/data/Vid4/")) == "Vid4"
  assert dataset_name(_spec(kind="video", root="/v/clip.mp4")) == "clip"
  assert dataset_name(_spec(kind="folders", root="/data/Vid4", name="Vid4-x")) == "Vid4-x"


def test_evaluate_without_datasets_is_a_clear_error(tmp_path):
  config = vimeo.get_config("tiny")
  config.eval.datasets = []
  with pytest.raises(ValueError, match="config.eval.datasets"):
    evaluate(config, str(tmp_path))
