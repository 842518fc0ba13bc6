"""Reproducibility: fingerprints, checksummed checkpoints, the manifest, a seed per stream, compare,
and device-count invariance, on the toy model of tests/train_fakes.py."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

import train_fakes
from megan_jax import checkpointing, fingerprint, logging_utils, repro, train
from megan_jax.models import lmga

SEED = 7  # the one stream changed in the "data" and "params" runs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_fakes.make_vimeo_tree(str(tmp_path_factory.mktemp("vimeo")))


def _train(data_root, workdir, **fields):
  train.train_and_evaluate(train_fakes.fast_config("tiny", data_root, **fields), workdir,
                           model=train_fakes.ToyModel())
  return workdir


def _resumed(data_root, workdir):
  """The toy run stopped by SIGTERM after step 2 (the signal is raised at step 1), then resumed."""
  log_line = train._log_line  # pylint: disable=protected-access

  def signal_at_step_1(step, *args):
    if step == 1:
      signal.raise_signal(signal.SIGTERM)
    return log_line(step, *args)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train, "_log_line", signal_at_step_1)
    with pytest.raises(train.Interrupted, match="after step 2"):
      _train(data_root, workdir)
  return _train(data_root, workdir)


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
  """Toy runs of 4 steps, checkpoints at 2 and 4: {name: workdir}."""
  root = tmp_path_factory.mktemp("runs")
  return {"a": _train(data_root, str(root / "a")),
          "rerun": _train(data_root, str(root / "rerun")),
          "resumed": _resumed(data_root, str(root / "resumed")),
          "data": _train(data_root, str(root / "data"), seeds__data=SEED),
          "params": _train(data_root, str(root / "params"), seeds__params=SEED)}


def _records(workdir) -> dict[int, dict]:
  return {r["step"]: r for r in logging_utils.read_jsonl(workdir)}


def test_fingerprint_is_sha256_of_the_bytes_and_sees_every_bit():
  x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
  want = hashlib.sha256(b"w:<f4:(3, 4);" + x.tobytes()).hexdigest()[:16]
  assert fingerprint.tree_hash({"w": x}) == want
  assert fingerprint.tree_hash({"w": jax.numpy.asarray(x)}) == want
  for index, bit in [(0, 0), (5, 17), (11, 31)]:  # lowest mantissa bit, a middle one, the sign
    flipped = x.copy().reshape(-1).view(np.uint32)
    flipped[index] ^= np.uint32(1 << bit)
    assert fingerprint.tree_hash({"w": flipped.view(np.float32).reshape(3, 4)}) != want
  assert fingerprint.tree_hash({"v": x}) != want  # the path is part of it


def test_fingerprints_logged_saved_and_restored_agree(runs):
  workdir = runs["a"]
  manager = checkpointing.make_manager(workdir, create=False)
  logged = _records(workdir)
  for step in (2, 4):
    saved = checkpointing.saved_fingerprints(manager, step)
    assert logged[step]["fingerprints"] == saved and set(saved) == {"params", "opt_state", "data"}
    params, _ = checkpointing.restore_params(workdir, step)
    assert fingerprint.tree_hash(params) == saved["params"]
  assert [s for s, r in logged.items() if "fingerprints" in r] == [2, 4]
  assert sorted(logged) == [1, 2, 3, 4]  # merged into the step's record: one line per step


def _flip_byte_in_largest_array_file(step_dir: str) -> None:
  files = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(step_dir, "state"))
           for n in names if os.sep + "d" + os.sep in os.path.join(d, n) + os.sep]
  big = max(files, key=os.path.getsize)
  with open(big, "r+b") as f:
    f.seek(os.path.getsize(big) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x01]))  # a float32's lowest mantissa or exponent bit: stays finite


def test_flipped_byte_in_a_checkpoint_falls_back(runs, data_root, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(runs["a"], workdir)
  ckpt = checkpointing.checkpoint_dir(workdir)
  _flip_byte_in_largest_array_file(os.path.join(ckpt, "4"))
  _train(data_root, workdir, num_steps=6)
  assert re.search(r"checkpoint step 4 in .* cannot be read \(CorruptCheckpointError: the \w+ of "
                   r"step 4: checksum \w+ differs .*\); using step 2", caplog.text), caplog.text
  assert os.path.isdir(os.path.join(workdir, checkpointing.UNREADABLE_DIR, "4"))
  redone = _records(workdir)
  assert redone[4]["fingerprints"] == _records(runs["a"])[4]["fingerprints"]  # steps 3, 4 redone


def test_non_finite_checkpoint_falls_back(tmp_path, caplog):
  manager = checkpointing.make_manager(str(tmp_path), async_save=False)
  data = iter(grain.MapDataset.range(10).to_iter_dataset())
  for step, value in ((1, 1.0), (2, np.nan)):
    checkpointing.save(manager, step, {"params": {"w": np.full(3, value, np.float32)},
                                       "opt_state": {"m": np.zeros(3, np.float32)}}, data)
  target = {"params": {"w": jax.ShapeDtypeStruct((3,), np.float32)},
            "opt_state": {"m": jax.ShapeDtypeStruct((3,), np.float32)}}
  state, step, _ = checkpointing.restore(checkpointing.make_manager(str(tmp_path)), target, data)
  assert step == 1 and np.asarray(state["params"]["w"]).tolist() == [1.0] * 3
  assert "step 2 " in caplog.text and "non-finite values in w" in caplog.text


def test_manifest_has_an_entry_per_start(runs):
  (first,) = repro.read_manifest(runs["a"])
  start, resume = repro.read_manifest(runs["resumed"])
  assert (start["start_step"], resume["start_step"]) == (0, 2)
  assert set(first["versions"]) == {"python", *repro.PACKAGES}
  assert first["versions"]["jax"] == jax.__version__
  assert first["devices"] == {jax.devices()[0].device_kind: 1} and first["process_count"] == 1
  assert first["xla_flags"] == os.environ.get("XLA_FLAGS", "") and first["deterministic"] is False
  assert first["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", first["git_commit"])
  assert first["config_hash"] == repro.read_manifest(runs["rerun"])[0]["config_hash"]
  assert first["config_hash"] != repro.read_manifest(runs["data"])[0]["config_hash"]
  # the resume started from the parameters that step 2 saved
  assert resume["fingerprints"]["params"] == _records(runs["a"])[2]["fingerprints"]["params"]


def test_seed_per_stream(runs):
  start = lambda name: repro.read_manifest(runs[name])[0]["fingerprints"]
  assert start("data")["params"] == start("a")["params"]
  assert start("data")["batch"] != start("a")["batch"]
  assert start("params")["params"] != start("a")["params"]
  assert start("params")["batch"] == start("a")["batch"]
  keys = [np.asarray(k) for k in jax.random.split(jax.random.PRNGKey(0), 3)]
  default = train.rng_streams(0)
  assert all(np.array_equal(default[n], k) for n, k in zip(("params", "lmga_init", "lmga"), keys))
  lmga_only = train.rng_streams(0, {"lmga": SEED})
  assert np.array_equal(lmga_only["params"], keys[0])
  assert not np.array_equal(lmga_only["lmga"], keys[2])


def test_compare_rerun_and_resume_are_identical(runs, capsys):
  config = train_fakes.fast_config("tiny", "/unused")
  for other in ("rerun", "resumed"):
    config.compare.other = runs[other]
    assert repro.compare_main(config, runs["a"]) == 0
    out = capsys.readouterr().out
    assert "configs: agree" in out and "result: identical" in out
    assert "all 4 common steps agree (losses and the fingerprints of 2 checkpoints" in out
    assert re.search(r"checkpoint step 4: parameters identical.*\n  Conv_0 +0 / 0", out)


def test_compare_names_the_first_differing_step(runs, capsys):
  config = train_fakes.fast_config("tiny", "/unused")
  config.compare.other = runs["data"]
  assert repro.compare_main(config, runs["a"]) == 1
  out = capsys.readouterr().out
  assert f"configs: differ: seeds.data (None vs {SEED})" in out
  assert re.search(r"first difference at step 1: .*loss", out)
  assert re.search(r"checkpoint step 4: parameters differ", out)


def test_compare_command_exit_code_on_bad_input(runs, tmp_path):
  missing = str(tmp_path / "missing")
  proc = subprocess.run([sys.executable, "-m", "megan_jax.main", "--mode=compare",
                         "--config=configs/vimeo.py", f"--workdir={runs['a']}",
                         f"--config.compare.other={missing}"],
                        cwd=train_fakes.REPO, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      f"megan_jax: error: compare: {missing} is not a folder; give two run folders "
      f"(--workdir=A --config.compare.other=B)")


_DEVICE_RUN = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
sys.path.insert(0, "tests")
import train_fakes
from megan_jax import train
from megan_jax.models import lmga
train.train_and_evaluate(train_fakes.fast_config("tiny", sys.argv[1]), sys.argv[2],
                         model=train_fakes.ToyModel())
mesh = Mesh(np.asarray(jax.devices()), ("data",))
pools = jax.jit(lambda k: lmga.sample_global_indices(k, 4, 7, 3),
                out_shardings=NamedSharding(mesh, P("data")))(jax.random.PRNGKey(0))
print("POOLS " + json.dumps(np.asarray(pools).tolist()))
"""


def test_device_counts(runs, data_root, tmp_path):
  """1, 2 and 4 CPU devices, global batch 4: the same batches, data positions and LMGA pools, bit
  for bit; losses and parameters equal up to the rounding of the cross-device gradient sum."""
  procs = {}
  for n in (2, 4):
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
    procs[n] = subprocess.Popen([sys.executable, "-c", _DEVICE_RUN, data_root,
                                 str(tmp_path / str(n))], cwd=train_fakes.REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  want_pools = np.asarray(lmga.sample_global_indices(jax.random.PRNGKey(0), 4, 7, 3)).tolist()
  one, params_one = _records(runs["a"]), checkpointing.restore_params(runs["a"])[0]
  first_batch = repro.read_manifest(runs["a"])[0]["fingerprints"]["batch"]
  for n, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert out.split("POOLS ")[-1].strip() == str(want_pools).replace("'", '"')
    workdir = str(tmp_path / str(n))
    (entry,) = repro.read_manifest(workdir)
    assert entry["device_count"] == n and entry["fingerprints"]["batch"] == first_batch
    got = _records(workdir)
    for step in (2, 4):
      assert got[step]["fingerprints"]["data"] == one[step]["fingerprints"]["data"]
    for step in one:  # bit-identical on the dev VM up to step 6 (README); not asserted: XLA's CPU
      # code (and with it the rounding of a cross-device sum) may differ on another CPU
      assert got[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-6)
    diffs = repro.module_differences(params_one, checkpointing.restore_params(workdir)[0])
    assert max(d for d, _ in diffs.values()) < 1e-6
