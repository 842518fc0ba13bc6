"""evaluate across runs: the checkpoint's table keeps every set's column, rows say what was scored,
any folder of clips is one flag, and bad input ends in one line naming the path."""

import json
import os
import re
import subprocess
import sys

import av
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import train_fakes
from megan_jax import checkpointing, evaluate, predict, pretrained
from megan_jax.evaluate import BASELINE

from configs import vimeo  # pylint: disable=wrong-import-order


def _clips(root, clips: dict, seed: int = 0) -> str:
  """ROOT/<name>/<t>.png of random 16x24 frames, {name: number of frames}; returns root."""
  rng = np.random.default_rng(seed)
  for name, num in clips.items():
    os.makedirs(os.path.join(root, name))
    for t in range(num):
      Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(
          os.path.join(root, name, f"{t}.png"))
  return str(root)


MODEL = train_fakes.ToyModel()


@pytest.fixture(name="toy_params", scope="module")
def _toy_params():
  return jax.jit(lambda: MODEL.init(jax.random.key(0), jnp.zeros((1, 4, 8, 8, 3)))["params"])()


@pytest.fixture(name="toy")
def _toy(monkeypatch, toy_params):
  """The toy model in place of MEGAN (compiles in about a second); returns its parameters."""
  monkeypatch.setattr(predict, "build_model", lambda cfg: MODEL)
  monkeypatch.setattr(evaluate, "build_model", lambda cfg: MODEL)
  return toy_params


def _config(**eval_fields):
  config = vimeo.get_config("tiny")
  config.model.name = "toy"
  config.eval.update(dict(progress=False, save_crops=False, **eval_fields))
  return config


def _files(directory) -> dict:
  """{relative path: bytes} of every file under `directory`."""
  out = {}
  for base, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(base, name), "rb") as f:
        out[os.path.relpath(os.path.join(base, name), directory)] = f.read()
  return out


def _summary(out_dir) -> dict:
  with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
    return json.load(f)


def test_a_second_set_joins_the_table_and_nothing_is_overwritten(toy, tmp_path):
  workdir = str(tmp_path / "w")
  checkpointing.save_params(workdir, toy)
  set_a = _clips(tmp_path / "setA", {"a1": 7})
  set_b = _clips(tmp_path / "setB", {"b1": 9}, seed=1)
  first = evaluate.evaluate(_config(folders=set_a), workdir)
  out_dir = first["dir"]
  files_a = {k: v for k, v in _files(out_dir).items() if k.startswith("setA")}
  with open(os.path.join(out_dir, "setA", "TOY.json"), encoding="utf-8") as f:
    toy_a = json.load(f)["mean"]

  evaluate.evaluate(_config(folders=set_b), workdir)
  summary = _summary(out_dir)["summary"]
  assert list(summary) == ["TOY", BASELINE]
  assert summary["TOY"]["setA"] == toy_a  # the first set's numbers, unchanged
  assert summary[BASELINE]["setA"] == first["summary"][BASELINE]["setA"]
  assert set(summary["TOY"]) == set(summary[BASELINE]) == {"setA", "setB"}
  with open(os.path.join(out_dir, "table.md"), encoding="utf-8") as f:
    md = f.read().splitlines()
  assert md[0] == "| Method | setA | setB |"
  assert md[2].startswith(f"| TOY | {toy_a['psnr_y']:.2f}/{toy_a['ssim_y']:.4f} | ")
  assert {k: v for k, v in _files(out_dir).items() if k.startswith("setA")} == files_a

  # The same set from the same source scored again replaces its own column, and only it.
  saved = _summary(out_dir)
  saved["summary"]["TOY"]["setA"] = {"psnr_y": 0.0, "ssim_y": 0.0, "psnr_rgb": 0.0}
  with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(saved, f)
  evaluate.evaluate(_config(folders=set_a), workdir)
  again = _summary(out_dir)["summary"]
  assert again["TOY"]["setA"] == toy_a and again["TOY"]["setB"] == summary["TOY"]["setB"]

  # A set of the same name from elsewhere, or scored otherwise, is refused before any work.
  other_a = _clips(tmp_path / "elsewhere" / "setA", {"x": 7}, seed=2)
  before = _files(out_dir)
  with pytest.raises(ValueError, match=r"^config\.eval\.folders: the column 'setA' of "
                     rf"{re.escape(os.path.join(out_dir, 'summary.json'))} was scored with other "
                     r"settings \(root '.*setA' -> '.*elsewhere/setA'\); give this set another"):
    evaluate.evaluate(_config(folders=other_a), workdir)
  with pytest.raises(ValueError, match=r"eval\.max_clips None -> 1"):
    evaluate.evaluate(_config(folders=set_a, max_clips=1), workdir)
  assert _files(out_dir) == before
  renamed = evaluate.evaluate(_config(folders=other_a, folders_name="setA2"), workdir)
  assert list(renamed["summary"]["TOY"]) == ["setA", "setB", "setA2"]


def test_a_table_without_sources_keeps_its_columns(toy, tmp_path):
  """A summary.json of an older version (no record of sources) is merged into, never replaced."""
  workdir = str(tmp_path / "w")
  checkpointing.save_params(workdir, toy)
  out_dir = os.path.join(workdir, "eval", "step_0")
  os.makedirs(out_dir)
  old = {"TOY": {"Old": {"psnr_y": 30.0, "ssim_y": 0.9, "psnr_rgb": 29.0}}}
  with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump({"step": 0, "summary": old}, f)
  out = evaluate.evaluate(_config(folders=_clips(tmp_path / "New", {"n": 7})), workdir)
  assert out["summary"]["TOY"]["Old"] == old["TOY"]["Old"] and "New" in out["summary"]["TOY"]
  with pytest.raises(ValueError, match="'Old' .* is there with no record of what it was scored on"):
    evaluate.evaluate(_config(folders=_clips(tmp_path / "Old", {"o": 7})), workdir)
  with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
    f.write("{ cut")
  with pytest.raises(ValueError, match=r"summary\.json: cannot read the results already there"):
    evaluate.evaluate(_config(folders=str(tmp_path / "New")), workdir)


def _step_checkpoint(workdir, params, step):
  manager = checkpointing.make_manager(workdir, async_save=False)
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
  manager.wait_until_finished()
  manager.close()


def test_rows_say_what_was_scored(toy, tmp_path):
  """The start checkpoint made from config.pretrained is labelled by that name, not eval.label;
  a trained checkpoint keeps eval.label, with the pretrained parameters as a row of their own."""
  npz = str(tmp_path / "start.npz")
  pretrained.save(npz, jax.device_get(toy), {})
  data = _clips(tmp_path / "Set", {"c": 7})
  config = _config(folders=data, label="TOY fine-tuned")
  config.pretrained = npz

  started = str(tmp_path / "started")
  pretrained.start_workdir(config, started, expected=toy)  # the toy model, not config.model
  out = evaluate.evaluate(config, started)
  assert out["step"] == 0 and list(out["summary"]) == ["TOY (start)", BASELINE]
  with open(os.path.join(out["dir"], "Set", "TOY_start.json"), encoding="utf-8") as f:
    assert json.load(f)["method"] == "TOY (start)"

  other = jax.tree.map(lambda x: x + 1, toy)
  converted = str(tmp_path / "converted")  # step 0, but not the config.pretrained parameters
  checkpointing.save_params(converted, other)
  assert list(evaluate.evaluate(config, converted)["summary"]) == ["TOY", "TOY (start)", BASELINE]

  trained = str(tmp_path / "trained")
  _step_checkpoint(trained, other, 5)
  out = evaluate.evaluate(config, trained)
  assert list(out["summary"]) == ["TOY fine-tuned", "TOY (start)", BASELINE]
  assert out["summary"]["TOY (start)"]["Set"] == evaluate.evaluate(config, started)["summary"][
      "TOY (start)"]["Set"]


def _write_video(path, frames):
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def test_any_folder_of_clips_is_one_flag(toy, tmp_path):
  workdir = str(tmp_path / "w")
  checkpointing.save_params(workdir, toy)
  root = _clips(tmp_path / "mine", {"clip10": 8, "clip2": 7})
  frames = np.random.default_rng(3).integers(0, 256, (9, 16, 24, 3), dtype=np.uint8)
  _write_video(os.path.join(root, "talk.mp4"), frames)
  out = evaluate.evaluate(_config(folders=root, folders_name="My clips"), workdir)
  res = out["results"]["My clips"]["TOY"]
  assert [(c["name"], c["num_frames"]) for c in res["clips"]] == [
      ("clip2", 7), ("clip10", 8), ("talk", 9)]
  assert os.path.isfile(os.path.join(out["dir"], "My_clips", "TOY.json"))
  default = evaluate.evaluate(_config(folders=root + "/"), workdir)
  assert "mine" in default["results"]


@pytest.mark.parametrize("case", ["empty", "short", "unreadable", "missing"])
def test_bad_folders_end_in_one_line_naming_the_path(toy, tmp_path, case):
  workdir = str(tmp_path / "w")
  checkpointing.save_params(workdir, toy)
  root = tmp_path / "clips"
  os.makedirs(root)
  if case == "empty":
    bad, error = str(root), ValueError
  elif case == "short":
    _clips(root, {"ok": 7, "short": 6})
    bad, error = str(root / "short"), ValueError
  elif case == "unreadable":
    _clips(root, {"ok": 7})
    (root / "broken.mp4").write_bytes(b"not a video at all" * 10)
    bad, error = str(root / "broken.mp4"), ValueError
  else:
    root, bad, error = tmp_path / "nope", str(tmp_path / "nope"), FileNotFoundError
  with pytest.raises(error) as e:
    evaluate.evaluate(_config(folders=str(root)), workdir)
  message = str(e.value)
  assert message.startswith("config.eval.folders: ") and bad in message and "\n" not in message
  assert not os.path.exists(os.path.join(workdir, "eval"))  # nothing written


def test_cli_bad_folders_root_is_one_line_and_a_nonzero_exit(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "megan_jax.main", "--mode=eval", "--config=configs/vimeo.py:tiny",
       f"--workdir={tmp_path / 'w'}", f"--config.eval.folders={tmp_path / 'nope'}"],
      cwd=train_fakes.REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2 and proc.stderr.strip() == (
      f"megan_jax: error: config.eval.folders: {tmp_path / 'nope'} does not exist; expected "
      f"ROOT/<clip>: folders of frames or video files"), proc.stderr
  assert not os.path.exists(tmp_path / "w")
