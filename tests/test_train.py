"""Training: loss, schedule, one MEGAN step, reruns, kill/resume, NaN stop, a 4-device mesh."""

import json
import math
import os
import signal
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fakes
from megan_jax import checkpointing, logging_utils, losses, train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_fakes.make_vimeo_tree(str(tmp_path_factory.mktemp("vimeo")))


def _bits(tree) -> list[np.ndarray]:
  return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(tree)]


def _assert_same_bits(a, b):
  for x, y in zip(_bits(a), _bits(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _toy():
  return train_fakes.ToyModel()


def _losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in logging_utils.read_jsonl(workdir) if "loss" in r}


@pytest.fixture(scope="module")
def straight_run(data_root, tmp_path_factory):
  """The toy model trained 4 steps without interruption: (workdir, final params)."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  train.train_and_evaluate(train_fakes.fast_config("tiny", data_root), workdir, model=_toy())
  return workdir, checkpointing.restore_params(workdir)[0]


def test_charbonnier_matches_numpy():
  rng = np.random.default_rng(0)
  pred, gt = rng.random((2, 3, 4, 4, 3)), rng.random((2, 3, 4, 4, 3))
  want = np.mean(np.sqrt((pred - gt) ** 2 + 1e-6))
  np.testing.assert_allclose(losses.charbonnier(jnp.asarray(pred), jnp.asarray(gt), 1e-3), want,
                             rtol=1e-6)
  assert float(losses.charbonnier(jnp.ones(5), jnp.ones(5), 1e-3)) == pytest.approx(1e-3)


def test_lr_schedule_is_cosine_with_restarts():
  opt = train_fakes.fast_config("tiny", "/unused").optimizer
  opt.cycle_steps = 100
  schedule = train.lr_schedule(opt, num_steps=300)
  lr, lo = 1e-4, 1e-7
  cosine = lambda t: lo + (lr - lo) * (1 + math.cos(math.pi * t / 100)) / 2
  for step, want in [(0, lr), (25, cosine(25)), (50, (lr + lo) / 2), (99, cosine(99)),
                     (100, lr), (150, (lr + lo) / 2), (250, (lr + lo) / 2)]:
    assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-10), step
  opt.restarts = 0  # one cycle, then the floor
  assert float(train.lr_schedule(opt, num_steps=300)(250)) == pytest.approx(lo, rel=1e-5)


def test_rng_streams_are_distinct_and_seeded():
  a, b = train.rng_streams(0), train.rng_streams(1)
  assert len({tuple(v) for v in a.values()}) == 3
  assert all(not np.array_equal(a[k], b[k]) for k in a)
  assert all(np.array_equal(a[k], train.rng_streams(0)[k]) for k in a)


def test_megan_tiny_one_step_end_to_end(data_root, tmp_path):
  """The real tiny MEGAN: pipeline -> mesh -> init -> one Adam step -> checkpoint. (A rerun's bits:
  test_rerun_is_bit_identical for the train plumbing, test_models for the model given its keys; a
  second compile of this model here cost a third of the suite's slowest test.)"""
  from megan_jax.models import build_model  # pylint: disable=import-outside-toplevel
  config = train_fakes.fast_config("tiny", data_root, num_steps=1, batch_size=1,
                                   data__crop=16)
  scalars = train.train_and_evaluate(config, str(tmp_path / "a"))
  assert math.isfinite(scalars["loss"]) and 0 < scalars["loss"] < 1
  params, step = checkpointing.restore_params(str(tmp_path / "a"))
  assert step == 1
  model = build_model(config.model)
  keys = train.rng_streams(config.seed)
  x = jnp.zeros((1, 4, 16, 16, 3))
  init = jax.jit(lambda: model.init({"params": keys["params"], "lmga": keys["lmga_init"]}, x,
                                    train=False)["params"])()
  # Adam's first step moves every parameter by lr * |g| / (|g| + 1e-8): at most lr = 1e-4, about lr
  # where |g| >> 1e-8. Only the offset-feature convs upstream of the zero-initialised offset/mask
  # convs of the deformable convs get g = 0 at init, and they must not move at all.
  flat = lambda tree: flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  after, before = flat(params), flat(init)
  delta = {k: np.abs(np.asarray(after[k]) - np.asarray(before[k])) for k in before}
  blocked = [k for k in delta if "offset_conv" in k]
  moved = np.concatenate([d.ravel() for k, d in delta.items() if k not in blocked])
  assert blocked and all(delta[k].max() == 0 for k in blocked)
  assert moved.max() == pytest.approx(1e-4, rel=1e-3)
  assert np.mean(moved > 0.5e-4) > 0.9


def test_rerun_is_bit_identical(straight_run, data_root, tmp_path):
  train.train_and_evaluate(train_fakes.fast_config("tiny", data_root), str(tmp_path / "a"),
                           model=_toy())
  _assert_same_bits(checkpointing.restore_params(str(tmp_path / "a"))[0], straight_run[1])
  train.train_and_evaluate(train_fakes.fast_config("tiny", data_root, seed=1), str(tmp_path / "b"),
                           model=_toy())
  other = checkpointing.restore_params(str(tmp_path / "b"))[0]
  assert not all(np.array_equal(x, y) for x, y in zip(_bits(other), _bits(straight_run[1])))


def test_sigterm_then_resume_is_bit_identical(straight_run, data_root, tmp_path, monkeypatch):
  log_line = train._log_line  # pylint: disable=protected-access

  def signal_at_step_1(step, *args):
    if step == 1:
      signal.raise_signal(signal.SIGTERM)
    return log_line(step, *args)

  monkeypatch.setattr(train, "_log_line", signal_at_step_1)
  config = train_fakes.fast_config("tiny", data_root, checkpoint_every=100)
  with pytest.raises(train.Interrupted, match="SIGTERM after step 2.*rerun the same command") as e:
    train.train_and_evaluate(config, str(tmp_path), model=_toy())
  assert e.value.exit_code == 128 + signal.SIGTERM
  assert checkpointing.restore_params(str(tmp_path))[1] == 2
  monkeypatch.setattr(train, "_log_line", log_line)
  train.train_and_evaluate(config, str(tmp_path), model=_toy())
  params, step = checkpointing.restore_params(str(tmp_path))
  assert step == 4
  _assert_same_bits(params, straight_run[1])
  assert _losses(str(tmp_path)) == _losses(straight_run[0])  # same batches after the resume


@pytest.mark.parametrize("log_every", [1, 4])
def test_nan_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch, log_every):
  make_step = train.make_train_step

  def nan_from_step_3(model, tx, eps):
    step_fn = make_step(model, tx, eps)
    return lambda state, batch, rng: step_fn(
        state, {**batch, "lr": jnp.where(state.step >= 2, jnp.nan, batch["lr"])}, rng)

  monkeypatch.setattr(train, "make_train_step", nan_from_step_3)
  config = train_fakes.fast_config("tiny", data_root, checkpoint_every=1, log_every=log_every)
  with pytest.raises(train.NonFiniteError, match="step 3.*last good checkpoint is step 2"):
    train.train_and_evaluate(config, str(tmp_path), model=_toy())
  params, step = checkpointing.restore_params(str(tmp_path))
  assert step == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_four_device_mesh_gives_the_same_loss(straight_run, data_root, tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  cmd = [sys.executable, train_fakes.__file__, "--config=configs/vimeo.py:tiny",
         f"--workdir={tmp_path}"] + train_fakes.overrides(data_root)
  proc = subprocess.run(cmd, cwd=train_fakes.REPO, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "4 devices" in proc.stdout
  want, got = _losses(straight_run[0]), _losses(str(tmp_path))
  assert sorted(got) == [1, 2, 3, 4]
  for step in got:
    assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-7), step


def test_logs_jsonl_and_tensorboard(straight_run):
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  workdir = straight_run[0]
  records = logging_utils.read_jsonl(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  speed = {"steps_per_sec", "clips_per_sec", "eta_sec"}  # measured from the end of step 1, the compile
  assert {"loss", "grad_norm", "lr"} <= set(records[0]) and not speed & set(records[0])
  assert all(speed <= set(r) for r in records[1:])
  assert records[-1]["eta_sec"] == 0
  tb_dir = os.path.join(workdir, logging_utils.TENSORBOARD_DIR)
  (name,) = os.listdir(tb_dir)
  with open(os.path.join(tb_dir, name), "rb") as f:
    data = f.read()
  scalars, offset = {}, 0
  while offset < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
    length = int.from_bytes(data[offset:offset + 8], "little")
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    offset += 16 + length
    for v in event.summary.value:
      scalars[(v.tag, event.step)] = v.simple_value
  for r in records:
    assert scalars[("loss", r["step"])] == pytest.approx(r["loss"], rel=1e-6)
  assert json.load(open(os.path.join(workdir, "config.json"), encoding="utf-8"))["batch_size"] == 4
  assert "tensorflow" not in sys.modules and "torch" not in sys.modules


def test_configs_and_variants():
  from configs import demo, vimeo  # pylint: disable=import-outside-toplevel
  c = vimeo.get_config()
  assert (c.batch_size, c.data.crop, c.loss_eps) == (16, 32, 1e-3)
  assert (c.optimizer.lr, c.optimizer.min_lr, c.optimizer.cycle_steps) == (1e-4, 1e-7, 20_000)
  assert (c.optimizer.b1, c.optimizer.b2) == (0.9, 0.99)
  assert c.model.use_lmga and c.model.use_nlrb and c.model.name == "megan"
  assert not vimeo.get_config("no_lmga").model.use_lmga
  assert not vimeo.get_config("no_nlrb").model.use_nlrb
  assert vimeo.get_config("zsm").model.name == "zsm"
  c.data.root = "/data/vimeo"  # the val and eval sets follow data.root unless set themselves
  assert c.val.root == "/data/vimeo" and {d.root for d in c.eval.datasets} == {"/data/vimeo"}
  c.val.root = "/elsewhere"
  assert c.data.root == "/data/vimeo" and c.eval.datasets[0].root == "/data/vimeo"
  d = demo.get_config()
  assert d.data.name == "embedded" and d.final_eval
  # The demo fine-tunes on the first part of the held-out clip and scores the rest: disjoint.
  assert tuple(d.data.clips) == (demo.HELD_OUT,) and d.pretrained == "demo_small"
  train_stop, (score_start, score_stop) = d.data.frames[demo.HELD_OUT][1], d.eval.datasets[0].frames
  assert train_stop <= score_start < score_stop and d.val.frames == d.eval.datasets[0].frames
  assert os.path.isfile(d.eval.datasets[0].root), d.eval.datasets[0].root
  from configs import pretrain  # pylint: disable=import-outside-toplevel
  p = pretrain.get_config()  # the packaged parameters never saw the demo's clip
  assert demo.HELD_OUT not in p.data.clips and not p.data.frames and p.pretrained is None
  from configs import pretrain_more  # pylint: disable=import-outside-toplevel
  m = pretrain_more.get_config("/photos")  # continues them on more photographs, same clips
  assert demo.HELD_OUT not in m.data.clips and m.pretrained == "demo_small"
  assert m.data.stills[:len(p.data.stills)] == p.data.stills
  assert m.data.stills[len(p.data.stills):] == tuple(
      f"/photos/{name}" for name in pretrain_more.OPENCV_STILLS)
  from configs import pretrain_downscaled  # pylint: disable=import-outside-toplevel
  s = pretrain_downscaled.get_config("/photos")  # and on all of them at half size too
  assert demo.HELD_OUT not in s.data.clips and s.data.stills[:len(m.data.stills)] == m.data.stills
  assert s.data.stills[len(m.data.stills):-1] == tuple(
      f"/photos/{name}" for name in pretrain_downscaled.MORE_OPENCV_STILLS)
  assert os.path.isfile(s.data.stills[-1]) and tuple(s.data.stills_scales) == (1, 2)


def test_deterministic_flag_is_added_once(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
  config = train_fakes.fast_config("tiny", "/unused", deterministic=True, compilation_cache_dir=None)
  train.setup_runtime(config)
  train.setup_runtime(config)
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_gpu_deterministic_ops=true"


def test_log_and_validation_lines_say_what_their_numbers_are():
  line = train._log_line(50, 200, 0.0671, 1e-4, {}, 1)  # pylint: disable=protected-access
  assert line == "step 50/200 | loss 0.06710 (mean of steps 1-50) | lr 0.0001"
  assert train._log_line(3, 4, 0.5, 1e-4, {}, 3) == "step 3/4 | loss 0.50000 | lr 0.0001"  # pylint: disable=protected-access
  val = {"val_psnr_y": 28.514, "val_ssim_y": 0.87621, "val_psnr_rgb": 27.0,
         "val_baseline_psnr_y": 26.011, "val_baseline_ssim_y": 0.80334, "val_baseline_psnr_rgb": 25.0}
  assert train._val_line(100, "Carphone 60-119", val) == (  # pylint: disable=protected-access
      "step 100 validation on Carphone 60-119: PSNR-Y 28.51 dB, SSIM-Y 0.8762 (bicubic + blending: "
      "26.01 dB, 0.8033)")
