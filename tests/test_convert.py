"""convert: official Zooming Slow-Mo weights in all three formats give the official output."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import vimeo  # the repository root is on the path (conftest.py)
from megan_jax import checkpointing, convert, evaluate, infer, metrics, predict
from megan_jax.data.testsets import VID4
from megan_jax.models import build_model, model_config
from torch_files import state_dict, write_zip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "zsm_small")
FORMATS = ["zsm_small.pth", "zsm_small_legacy.pth", "zsm_small_state_dict.npz"]
WIDTH = {"nf": 8, "groups": 8, "front_rbs": 1, "back_rbs": 2}  # LunaTokis(8, 7, 8, 1, 2)
WIDTH_FLAGS = [f"--config.model.{k}={v}" for k, v in WIDTH.items() if k != "groups"]


def _official() -> dict:
  with np.load(os.path.join(FIXTURES, "zsm_small_state_dict.npz")) as z:
    return {k: z[k] for k in z.files}


def _config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({"model": model_config("zsm"),
                                      "data": {"num_input_frames": 4}})
  config.model.update(WIDTH)
  return config


def _paths(tree) -> set:
  return {"/".join(k.key for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _zsm_tree(**fields):
  cfg = model_config("zsm")
  cfg.update(fields)
  x = jnp.zeros((1, 2, 16, 16, 3))
  return jax.eval_shape(lambda: build_model(cfg).init(
      {"params": jax.random.key(0), "lmga": jax.random.key(1)}, x))["params"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """{file name: workdir} of each fixture format converted, converted on first use."""
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = str(tmp_path_factory.mktemp("zsm"))
      fields, written = convert.convert(os.path.join(FIXTURES, name), cache[name])
      assert fields == {**WIDTH, "hr_features": 64}
      assert written == os.path.join(checkpointing.checkpoint_dir(cache[name]), "0")
    return cache[name]

  return get


def test_names_map_onto_the_zsm_tree_both_ways():
  names = list(_official())
  assert {convert.to_flax(n) for n in names} == _paths(_zsm_tree(**WIDTH))
  assert [convert.to_torch(convert.to_flax(n)) for n in names] == names
  full = _paths(_zsm_tree())  # the official LunaTokis(64, 7, 8, 5, 40): 416 tensors
  official = {convert.to_torch(p) for p in full}
  assert len(official) == len(full) == 416
  assert {convert.to_flax(n) for n in official} == full
  assert "recon_trunk.39.conv2.bias" in official and "feature_extraction.4.conv1.weight" in official


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_reproduces_the_official_output(converted, name):
  predict_fn, step = predict.restore_predict_fn(_config(), converted(name))
  assert step == 0
  with np.load(os.path.join(FIXTURES, "zsm_small_io.npz")) as io:
    lr, want = io["lr"], io["out"]  # (2, 4, 16, 24, 3), (2, 7, 64, 96, 3)
  got = np.concatenate([predict_fn(lr[i:i + 1]) for i in range(len(lr))])
  assert got.shape == want.shape
  assert np.abs(got - want).max() < 1e-3
  # PSNR of the images the protocol scores (outputs clipped to [0, 1]); the random-weight
  # outputs span about [-8, 8], where the error relative to the signal is what compares.
  mse = np.mean((np.clip(got, 0, 1) - np.clip(want, 0, 1)) ** 2)
  assert 10 * np.log10(1 / mse) > 100
  assert np.sqrt(np.mean((got - want) ** 2) / np.mean(want ** 2)) < 1e-4


def test_nested_state_dicts_and_the_dataparallel_prefix_read_the_same(tmp_path):
  plain = _official()
  obj, storages = state_dict({"module." + k: v for k, v in plain.items()},
                             wrap=lambda sd: {"epoch": 3, "state_dict": sd})
  nested_pth = write_zip(str(tmp_path / "nested.pth"), obj, storages)
  nested_npz = str(tmp_path / "nested.npz")
  np.savez(nested_npz, **{f"params/module.{k}": v for k, v in plain.items()})
  for path in (nested_pth, nested_npz):
    got = convert.read_state_dict(path)
    assert list(got) == list(plain)
    assert all(np.array_equal(got[k], plain[k]) for k in plain)


def _problem(tensors, match):
  with pytest.raises(convert.ConversionError, match=match):
    convert.zsm_params(tensors, convert.infer_fields(tensors))


def test_every_tensor_is_accounted_for():
  official = _official()
  _problem({**official, "extra_head.weight": np.zeros(3, np.float32)},
           r"tensors without a counterpart in Zooming Slow-Mo: extra_head.weight")
  missing = dict(official)
  del missing["pcd_align.L2_fea_conv_2.bias"]
  _problem(missing, r"missing tensors: pcd_align.L2_fea_conv_2.bias$")
  block = {k.replace("recon_trunk.1.", "recon_trunk.7."): v for k, v in official.items()}
  _problem(block, r"tensors beyond the architecture .*'back_rbs': 2.*: recon_trunk.7.conv1.bias, "
           r".*missing tensors: recon_trunk.1.conv1.bias")
  wide = {**official, "fusion.weight": np.zeros((8, 24, 1, 1), np.float32)}
  _problem(wide, r"shape mismatches for model.nf=8, model.groups=8, model.front_rbs=1, "
           r"model.back_rbs=2, model.hr_features=64 .*: fusion.weight \(8, 24, 1, 1\) "
           r"\(expected \(8, 16, 1, 1\)\)")
  del missing["conv_first.weight"]
  with pytest.raises(convert.ConversionError, match="missing tensor conv_first.weight, from "
                     "which model.nf is read"):
    convert.infer_fields(missing)
  with pytest.raises(convert.ConversionError, match=r"x.pth: no state_dict found: the top-level "
                     r"keys are \['epoch', 'optimizer'\]"):
    convert.find_state_dict({"epoch": 1, "optimizer": {"lr": 1}}, "x.pth")
  with pytest.raises(convert.ConversionError, match="conv_first.bias appears twice"):
    convert.find_state_dict({"conv_first.bias": np.zeros(1), "module.conv_first.bias": np.zeros(1)},
                            "x.pth")


def test_the_readme_commands_then_eval_and_infer(converted, tmp_path, capsys):
  """The convert command as a user runs it, then eval with a Table 1 flag and infer on its
  checkpoint through configs/vimeo.py:zsm (in-process, sharing the compilations above)."""
  env = {**os.environ, "PYTHONPATH": REPO}
  workdir = str(tmp_path / "w")
  run = lambda *args: subprocess.run([sys.executable, "-m", "megan_jax.convert", *args], cwd=REPO,
                                     env=env, capture_output=True, text=True, timeout=600)
  bad = run("--from=zsm", str(tmp_path / "none.pth"), f"--workdir={workdir}")
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines() == [
      f"megan_jax.convert: error: {tmp_path / 'none.pth'}: no such file"]
  done = run("--from=zsm", os.path.join(FIXTURES, "zsm_small.pth"), f"--workdir={workdir}")
  assert done.returncode == 0, done.stderr
  assert (f"python -m megan_jax.main --mode=eval --config=configs/vimeo.py:zsm "
          f"--workdir={workdir} {' '.join(WIDTH_FLAGS)}") in done.stdout
  with pytest.raises(ValueError, match=r"already holds checkpoints \(steps \[0\]\)"):
    convert.convert(os.path.join(FIXTURES, "zsm_small.pth"), workdir)

  rng = np.random.default_rng(0)
  for seq in VID4:
    for t in range(1, 8):
      path = tmp_path / "Vid4" / seq / f"Frame {t:03d}.png"
      os.makedirs(path.parent, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(path)
  config = vimeo.get_config("zsm")
  config.model.update(WIDTH)
  config.eval.vid4 = str(tmp_path / "Vid4")
  evaluate.evaluate(config, workdir)
  captured = capsys.readouterr()
  assert next(l for l in captured.out.splitlines() if l.startswith("Method")).split() == [
      "Method", "Vid4"]
  assert re.search(r"Vid4 ZSM: 100%.* 28/28 ", captured.err)

  frames = rng.integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)  # 5 LR frames -> 9 at 4x
  os.makedirs(tmp_path / "in")
  for t, frame in enumerate(frames):
    Image.fromarray(frame).save(tmp_path / "in" / f"{t}.png")
  config.infer.input, config.infer.output = str(tmp_path / "in"), str(tmp_path / "out")
  config.infer.progress = False
  out = infer.infer(config, workdir)
  got = np.stack([np.asarray(Image.open(os.path.join(out, f))) for f in sorted(os.listdir(out))])
  predict_fn, _ = predict.restore_predict_fn(_config(), converted("zsm_small.pth"))
  lr = frames.astype(np.float32) / 255
  # Windows of inputs 0-3 (all 7 outputs) and 1-4 (its last 2 outputs, the new ones).
  want = np.concatenate([predict_fn(lr[None, :4])[0], predict_fn(lr[None, 1:])[0, -2:]])
  np.testing.assert_array_equal(got, metrics.to_uint8(want))


def test_bad_workdirs_and_files_are_one_line_before_any_work(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  proc = subprocess.run(
      [sys.executable, "-m", "megan_jax.convert", "--from=zsm",
       os.path.join(FIXTURES, "zsm_small.pth"), f"--workdir={a_file / 'run'}"], cwd=REPO,
      env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      f"megan_jax.convert: error: --workdir: {a_file / 'run'}: Not a directory; a part of the path "
      f"is a file: choose another path"]
  with pytest.raises(NotADirectoryError, match=re.escape(f"--workdir: {a_file} is a file")):
    convert.convert(os.path.join(FIXTURES, "zsm_small.pth"), str(a_file))
  (tmp_path / "empty.npz").write_bytes(b"")
  with open(os.path.join(FIXTURES, "zsm_small_state_dict.npz"), "rb") as f:
    (tmp_path / "cut.npz").write_bytes(f.read()[:4000])
  (tmp_path / "folder.pth").mkdir()
  for name, what in (("empty.npz", ValueError), ("cut.npz", ValueError),
                     ("folder.pth", IsADirectoryError)):
    with pytest.raises(what, match=re.escape(str(tmp_path / name))
                       + r"(: the file is empty|: looks truncated| is a directory)"):
      convert.convert(str(tmp_path / name), str(tmp_path / "run"))
  assert sorted(os.listdir(tmp_path)) == ["a_file", "cut.npz", "empty.npz", "folder.pth"]
