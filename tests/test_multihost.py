"""Two local processes joined by jax.distributed train the toy model on one global batch."""

import json
import os
import socket
import subprocess
import sys

import train_fakes
from megan_jax import checkpointing, logging_utils


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_on_the_loss(tmp_path):
  data_root = train_fakes.make_vimeo_tree(str(tmp_path / "vimeo"), num_clips=8)
  workdir = str(tmp_path / "run")
  port = _free_port()
  procs = []
  for pid in range(2):
    cmd = [sys.executable, train_fakes.__file__, "--config=configs/vimeo.py:tiny",
           f"--workdir={workdir}"] + train_fakes.overrides(
               data_root, num_steps=3, distributed__enabled=True,
               distributed__coordinator_address=f"127.0.0.1:{port}",
               distributed__num_processes=2, distributed__process_id=pid)
    procs.append(subprocess.Popen(cmd, cwd=train_fakes.REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    (line,) = [l for l in out.splitlines() if l.startswith("RESULT ")]
    results.append(json.loads(line[len("RESULT "):]))
  assert sorted(r["process"] for r in results) == [0, 1]
  assert results[0]["loss"] == results[1]["loss"]  # one global loss, computed once per step
  assert results[0]["grad_norm"] == results[1]["grad_norm"]
  records = logging_utils.read_jsonl(workdir)  # written by process 0 only
  assert [r["step"] for r in records] == [1, 2, 3]
  assert records[-1]["loss"] == results[0]["loss"]
  data_states = sorted(os.listdir(os.path.join(checkpointing.checkpoint_dir(workdir), "3", "data")))
  assert [n for n in data_states if n.endswith(".json")] == ["process_0-of-2.json",
                                                             "process_1-of-2.json"]
  assert checkpointing.restore_params(workdir)[1] == 3
