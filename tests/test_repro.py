"""Reproducibility: fingerprints, checksummed checkpoints, the manifest, a seed per stream, compare,
and device-count invariance, on the toy model of tests/train_fakes.py."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
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


def _read_state(step_dir: str):
  """The arrays of a checkpoint step read by orbax alone (no fingerprint check): the independent view
  of what a corrupted file decodes to. None when orbax cannot decode them."""
  try:
    return [np.asarray(a) for a in jax.tree.leaves(ocp.PyTreeCheckpointer().restore(
        os.path.join(step_dir, "state")))]
  except Exception:  # pylint: disable=broad-except
    return None


def _flip_a_byte_that_changes_a_finite_value(step_dir: str) -> None:
  """Flips one bit of the largest array file such that the step still decodes, every value stays
  finite and some value changes: the only thing wrong is then the checksum. The files are compressed
  (zstd), so what a flipped bit decodes to depends on the bytes: the bit is chosen, by reading the
  result back with orbax, instead of left to chance (a flip that made a value NaN was reported as
  "non-finite values", a different and also right message; issue 31)."""
  files = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(step_dir, "state"))
           for n in names if os.sep + "d" + os.sep in os.path.join(d, n) + os.sep]
  big = max(files, key=os.path.getsize)
  before = _read_state(step_dir)
  with open(big, "rb") as f:
    original = f.read()
  size = len(original)
  for offset in range(size // 2, size - 16, 7):  # from the middle on: payload, not the header
    corrupted = bytearray(original)
    corrupted[offset] ^= 0x01
    with open(big, "wb") as f:
      f.write(corrupted)
    after = _read_state(step_dir)
    if (after is not None and all(np.isfinite(a).all() for a in after if a.dtype.kind == "f")
        and any(not np.array_equal(a, b) for a, b in zip(after, before))):
      return
  raise AssertionError(f"no single-bit flip in {big} decodes to changed finite values")


def test_flipped_byte_in_a_checkpoint_falls_back(runs, data_root, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(runs["a"], workdir)
  ckpt = checkpointing.checkpoint_dir(workdir)
  _flip_a_byte_that_changes_a_finite_value(os.path.join(ckpt, "4"))
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


def _edited_copy(workdir: str, dest: str, **fields) -> str:
  """A copy of run folder `workdir` whose recorded config.json has the dotted `fields` replaced."""
  shutil.copytree(workdir, dest)
  path = os.path.join(dest, "config.json")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  for dotted, value in fields.items():
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    assert leaf in node, dotted
    node[leaf] = value
  with open(path, "w", encoding="utf-8") as f:
    json.dump(config, f)
  return dest


# The settings that cannot change what a run computes (README, "Reproducibility"): how the data are
# read, how checkpoints are written and kept, what the other modes do. Written out here, not read
# from repro.NO_EFFECT, so that a setting dropped from (or added to) that list shows.
_CANNOT_CHANGE_RESULTS = {"data.workers": 5, "data.read_threads": 7, "async_checkpointing": False,
                          "compilation_cache_dir": "/tmp/elsewhere", "final_eval": True,
                          "keep_checkpoints": 9, "eval.tile": 64, "infer.output": "x.mp4",
                          "export.overwrite": True, "compare.other": "/tmp/b",
                          "distributed.num_processes": 1}


def test_compare_lists_settings_that_cannot_change_results_apart(runs, tmp_path, capsys):
  """A rerun whose recorded config differs only in those settings is identical, and compare lists
  them apart; a setting that changes the crops (data.crop) makes the configs differ."""
  other = _edited_copy(runs["rerun"], str(tmp_path / "b"), **_CANNOT_CHANGE_RESULTS)
  lines, identical = repro.compare(runs["a"], other)
  text = "\n".join(lines)
  assert identical and "configs: agree" in text, text
  listed = re.search(r"\(settings that do not change the results differ: (.*)\)", text).group(1)
  for field in _CANNOT_CHANGE_RESULTS:
    assert field in listed, (field, listed)
  other = _edited_copy(runs["rerun"], str(tmp_path / "c"), **{"data.crop": 12})
  lines, identical = repro.compare(runs["a"], other)
  assert not identical and "configs: differ: data.crop (8 vs 12)" in "\n".join(lines)


def test_compare_of_a_chosen_step_diffs_that_checkpoint(runs):
  """compare.step=2 diffs the step-2 parameters (not the latest, 4): the reported largest absolute
  difference per module is that of the two step-2 checkpoints, computed here with numpy."""
  lines, identical = repro.compare(runs["a"], runs["params"], step=2)
  assert not identical
  a, b = (checkpointing.restore_params(w, 2)[0] for w in (runs["a"], runs["params"]))
  for name in a:
    want = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name])))
    (line,) = [l for l in lines if l.strip().startswith(name + " ")]
    assert line.split()[1] == f"{want:.3g}", (line, want)
  assert any(l.startswith("checkpoint step 2: parameters differ") for l in lines)
  with pytest.raises(ValueError, match=r"run A has no checkpoint of step 3 \(it has \[2, 4\]\)"):
    repro.compare(runs["a"], runs["params"], step=3)


def test_export_of_a_chosen_step_replaces_the_file_when_asked(runs, tmp_path):
  """config.export.step=2 writes the step-2 parameters (not the latest), and overwrite=True really
  replaces an existing file with them: its arrays are those of the step-2 checkpoint."""
  from megan_jax import pretrained  # pylint: disable=import-outside-toplevel
  target = tmp_path / "params.npz"
  target.write_bytes(b"a user's file")
  config = train_fakes.fast_config("tiny", "/unused")
  config.export.update(output=str(target), step=2, overwrite=True)
  assert pretrained.export(config, runs["a"], "configs/vimeo.py:tiny") == str(target)
  got, meta = pretrained.load(str(target))
  want = checkpointing.restore_params(runs["a"], 2)[0]
  latest = checkpointing.restore_params(runs["a"], 4)[0]
  assert meta["steps"] == 2
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for x, y, z in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(latest)):
    np.testing.assert_array_equal(x, y)
    assert not np.array_equal(x, z)  # training moved every array between steps 2 and 4


_GIT_ENVIRONMENT = """
import json, sys, types
from megan_jax import repro
config = types.SimpleNamespace(deterministic=False)
clean = repro.environment(config)
with open(sys.argv[1], "a") as f:
  f.write("# a local change\\n")
changed = repro.environment(config)
print("ENV " + json.dumps([clean["git_commit"], clean["git_local_changes"],
                           changed["git_commit"], changed["git_local_changes"]]))
"""


def test_manifest_records_the_git_commit_and_local_changes(tmp_path):
  """The code's commit and whether tracked files were edited, as git reports them: the package is
  copied into a fresh git repository with one commit, then a tracked file is edited."""
  repo = tmp_path / "code"
  shutil.copytree(os.path.join(train_fakes.REPO, "megan_jax"), repo / "megan_jax", symlinks=True,
                  ignore=shutil.ignore_patterns("__pycache__"))
  if os.path.islink(repo / "megan_jax" / "kernels"):  # megan_jax/kernels links to ../kernels
    shutil.copytree(os.path.join(train_fakes.REPO, "kernels"), repo / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
  git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True,
                                  check=True).stdout.strip()
  git("init", "-q")
  git("add", "-A")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "code")
  commit = git("rev-parse", "HEAD")
  env = dict(os.environ, PYTHONPATH=str(repo))
  proc = subprocess.run([sys.executable, "-c", _GIT_ENVIRONMENT, str(repo / "megan_jax" / "npz.py")],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.split("ENV ")[-1])
  assert got == [commit, False, commit, True]
