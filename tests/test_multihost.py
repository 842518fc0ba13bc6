"""Processes and devices: two local processes joined by jax.distributed, one process with two forced
CPU devices and one with one device read the same global batches, and a checkpoint written with one
shape resumes with another (docs/DISTRIBUTED.md), on the toy model of tests/train_fakes.py."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import train_fakes
from megan_jax import checkpointing, logging_utils, repro, train

NUM_STEPS = 6  # the reference run; the runs on other shapes train 4 steps, resumes go on to 6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(data_root, workdir, devices=1, **fields) -> subprocess.Popen:
  """`python tests/train_fakes.py` (the toy model through main.py) with `devices` CPU devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
  cmd = [sys.executable, train_fakes.__file__, "--config=configs/vimeo.py:tiny",
         f"--workdir={workdir}"] + train_fakes.overrides(data_root, **fields)
  return subprocess.Popen(cmd, cwd=train_fakes.REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  (line,) = [l for l in out.splitlines() if l.startswith("RESULT ")]
  return json.loads(line[len("RESULT "):])


def _train_here(data_root, workdir, num_steps=NUM_STEPS):
  """One process, one device (this one)."""
  train.train_and_evaluate(train_fakes.fast_config("tiny", data_root, num_steps=num_steps),
                           workdir, model=train_fakes.ToyModel())
  return workdir


def _copy(workdir, to, drop_steps=()) -> str:
  shutil.copytree(workdir, to)
  for step in drop_steps:
    shutil.rmtree(os.path.join(checkpointing.checkpoint_dir(to), str(step)))
  return to


def _records(workdir) -> dict[int, dict]:
  return {r["step"]: r for r in logging_utils.read_jsonl(workdir)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{name: workdir}: "one" (1 process x 1 device, 6 steps); "procs" (2 processes x 1 device) and
  "devices" (1 process x 2 devices), 4 steps; resumed to 6 steps: "procs_to_one" and
  "devices_to_one" (from their step 4, on 1 device), "one_to_two" (from "one"'s step 2, 2 devices);
  plus "results" of the 2 processes."""
  root = tmp_path_factory.mktemp("multihost")
  data_root = train_fakes.make_vimeo_tree(str(root / "vimeo"), num_clips=8)
  runs = {"data_root": data_root, "one": _train_here(data_root, str(root / "one"))}
  runs["one_to_two"] = _copy(runs["one"], str(root / "one_to_two"), drop_steps=(4, 6))
  port = _free_port()
  procs = [_start(data_root, str(root / "procs"), num_steps=4, distributed__enabled=True,
                  distributed__coordinator_address=f"127.0.0.1:{port}",
                  distributed__num_processes=2, distributed__process_id=pid) for pid in range(2)]
  others = [_start(data_root, str(root / "devices"), devices=2, num_steps=4),
            _start(data_root, runs["one_to_two"], devices=2, num_steps=NUM_STEPS)]
  runs["results"] = [_result(p) for p in procs]
  for p in others:
    _result(p)
  runs["procs"], runs["devices"] = str(root / "procs"), str(root / "devices")
  for name in ("procs", "devices"):
    runs[f"{name}_to_one"] = _train_here(data_root, _copy(runs[name], str(root / f"{name}_to_one")))
  return runs


def _hand_data_prints(data_root, steps: int) -> dict[int, str]:
  """The data fingerprint derived by hand: SHA-256 chained over each global batch's examples,
  each example's digest the first 8 bytes of SHA-256 of its shapes and uint8 bytes (batch 4 of
  one process: the reference order)."""
  from megan_jax.data.pipeline import make_train_iter  # pylint: disable=import-outside-toplevel
  config = train_fakes.fast_config("tiny", data_root)
  it = make_train_iter(config.data, batch_size=4, seed=config.seed, shard_index=0, shard_count=1)
  prints, chain = {}, ""
  for step in range(1, steps + 1):
    batch = next(it)
    digests = b""
    for lr, gt in zip(*(np.round(batch[k] * 255).astype(np.uint8) for k in ("lr", "gt"))):
      digests += hashlib.sha256(f"{lr.shape};{gt.shape};".encode() + lr.tobytes()
                                + gt.tobytes()).digest()[:8]
    chain = hashlib.sha256(chain.encode() + digests).hexdigest()[:16]
    prints[step] = chain
  return prints


def test_processes_and_devices_read_the_same_global_batches(runs):
  """2 processes x 1 device and 1 process x 2 devices read what 1 process x 1 device reads (the
  data fingerprints, derived by hand, at every checkpoint; the first batch's), and the losses agree
  to float rounding."""
  one = _records(runs["one"])
  want = _hand_data_prints(runs["data_root"], 4)
  assert {s: one[s]["fingerprints"]["data"] for s in (2, 4)} == {2: want[2], 4: want[4]}
  first_batch = repro.read_manifest(runs["one"])[0]["fingerprints"]["batch"]
  for name, processes, devices in (("procs", 2, 2), ("devices", 1, 2)):
    (entry,) = repro.read_manifest(runs[name])
    assert (entry["process_count"], entry["device_count"]) == (processes, devices)
    assert entry["fingerprints"]["batch"] == first_batch
    got = _records(runs[name])
    assert sorted(got) == [1, 2, 3, 4]  # written once, by process 0
    for step in (2, 4):
      assert got[step]["fingerprints"]["data"] == want[step], (name, step)
    for step in range(1, 5):
      assert got[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5), (name, step)
  results = runs["results"]
  assert sorted(r["process"] for r in results) == [0, 1]
  assert results[0]["loss"] == results[1]["loss"]  # one global loss, computed once per step
  assert results[0]["loss"] == _records(runs["procs"])[4]["loss"]
  data_states = sorted(os.listdir(os.path.join(checkpointing.checkpoint_dir(runs["procs"]), "4",
                                               "data")))
  assert [n for n in data_states if n.endswith(".json")] == ["process_0-of-2.json",
                                                             "process_1-of-2.json"]


@pytest.mark.parametrize("name,start,processes,devices", [
    ("procs_to_one", 4, 1, 1), ("devices_to_one", 4, 1, 1), ("one_to_two", 2, 1, 2)])
def test_resume_on_another_shape_continues_the_same_batches(runs, name, start, processes, devices):
  """A checkpoint of 2 processes or 2 devices resumes on 1 device, one of 1 device on 2: the
  resume starts at the checkpoint's step, reads the batches the uninterrupted run read (data
  fingerprints equal) and its losses agree with it to float rounding."""
  one, got = _records(runs["one"]), _records(runs[name])
  resume = repro.read_manifest(runs[name])[-1]
  assert resume["start_step"] == start
  assert (resume["process_count"], resume["device_count"]) == (processes, devices)
  assert sorted(got) == list(range(1, NUM_STEPS + 1))
  for step in range(start + 2, NUM_STEPS + 1, 2):
    assert got[step]["fingerprints"]["data"] == one[step]["fingerprints"]["data"], step
  for step in range(start + 1, NUM_STEPS + 1):
    assert got[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5), step
  assert checkpointing.restore_params(runs[name])[1] == NUM_STEPS


_ON_PROCESS_0 = """
import sys, time
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from megan_jax import checkpointing, multiprocess
workdir, out, fail = sys.argv[3], sys.argv[4], sys.argv[5] == "fail"

def work():
  params, step = checkpointing.restore_params(workdir)  # a reader that waits for no other process
  time.sleep(2)  # the other process waits meanwhile
  if fail:
    raise ValueError("the work failed")
  with open(out, "a") as f:
    f.write(f"written by process {jax.process_index()} from step {step}\\n")
  return step

print("RETURNED", multiprocess.on_process_0("the test's work", work), flush=True)
"""


def test_eval_and_infer_work_runs_once_on_process_0(tmp_path):
  """The work of --mode=eval/infer/export and of the final evaluation in a 2-process job: process 0
  restores a checkpoint and writes alone, the other says so and waits; a failure on process 0
  ends both (process 0 with the error), neither hangs. Two jobs at once: one fails."""
  workdir = str(tmp_path / "run")
  checkpointing.save_params(workdir, {"w": np.arange(3, dtype=np.float32)})  # step 0
  jobs = {}
  for outcome in ("ok", "fail"):
    out, port = str(tmp_path / f"{outcome}.txt"), _free_port()
    jobs[outcome] = out, [subprocess.Popen(
        [sys.executable, "-c", _ON_PROCESS_0, f"127.0.0.1:{port}", str(pid), workdir, out,
         outcome], cwd=train_fakes.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for pid in range(2)]
  for outcome, (out, procs) in jobs.items():
    (out0, err0), (out1, err1) = (p.communicate(timeout=120) for p in procs)
    assert procs[1].returncode == 0, err1[-3000:]
    assert out1.splitlines() == [
        "process 1 of 2: the test's work runs on process 0 only, which writes its output and "
        "prints its results; waiting for it", "process 1 of 2: process 0 finished the test's work",
        "RETURNED None"]
    if outcome == "fail":
      assert procs[0].returncode != 0 and "ValueError: the work failed" in err0
      assert not os.path.exists(out)
    else:
      assert procs[0].returncode == 0, err0[-3000:]
      assert out0.splitlines() == ["RETURNED 0"]
      with open(out, encoding="utf-8") as f:
        assert f.read() == "written by process 0 from step 0\n"


def test_a_global_batch_the_devices_cannot_split_is_refused_in_one_line(runs, monkeypatch):
  """Resuming a batch-4 run on 3 devices or 3 processes: refused before anything is restored."""
  config = train_fakes.fast_config("tiny", runs["data_root"], num_steps=8)
  for counter, what in (("device_count", "devices of the mesh"), ("process_count", "processes")):
    with monkeypatch.context() as patch:
      patch.setattr(train.jax, counter, lambda: 3)
      with pytest.raises(ValueError) as info:
        train.validate_config(config)
    assert str(info.value) == (
        f"config.batch_size: 4 (the global batch) is not divisible by the 3 {what}; use a "
        f"multiple of 3, or as many devices and processes as divide it (a run resumes on any "
        f"such number)")
