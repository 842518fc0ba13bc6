"""Stop signals and a full disk, through the command line: one line, exit 128 + the signal, no
traceback, the checkpoints intact.

Run as a script, it is `python -m megan_jax.main` with a toy model whose train step sleeps
(SLOW_TOY_FIRST seconds at the first step, SLOW_TOY_SECONDS at the others), so that a signal
lands inside a step as it would in a real run's minutes-long compile or step.
"""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import pytest

import train_fakes
from megan_jax import checkpointing, logging_utils, workdir_lock

_CALLS = [0]


def _pause():
  _CALLS[0] += 1
  time.sleep(float(os.environ["SLOW_TOY_FIRST" if _CALLS[0] == 1 else "SLOW_TOY_SECONDS"]))


class SlowToy(train_fakes.ToyModel):
  """The toy model, with a host callback that sleeps in each training step."""

  def __call__(self, x, *, train: bool = False):
    if train:
      jax.debug.callback(_pause)
    return super().__call__(x, train=train)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_fakes.make_vimeo_tree(str(tmp_path_factory.mktemp("vimeo")), num_clips=4)


def _start(data_root, workdir, first: float, later: float, **fields) -> subprocess.Popen:
  cmd = [sys.executable, __file__, "--config=configs/vimeo.py:tiny", f"--workdir={workdir}",
         *train_fakes.overrides(data_root, **{"num_steps": 1000, "checkpoint_every": 1000,
                                              **fields})]
  env = {**os.environ, "SLOW_TOY_FIRST": str(first), "SLOW_TOY_SECONDS": str(later)}
  return subprocess.Popen(cmd, cwd=train_fakes.REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _wait_for_steps(proc, workdir: str, steps: int) -> None:
  deadline = time.time() + 120
  while len(logging_utils.read_jsonl(workdir, strict=False)) < steps:
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.05)


def _one_line_end(proc, timeout: float = 60) -> tuple[str, str]:
  """(stderr, its last line) of a process that must end with one error line, no traceback."""
  _, err = proc.communicate(timeout=timeout)
  assert "Traceback" not in err, err[-3000:]
  return err, err.strip().splitlines()[-1]


def _running(pid: str) -> bool:
  """Whether process `pid` exists and is not a zombie (an orphan waits for its reaper)."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def test_sigterm_before_the_first_step_stops_at_once(data_root, tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start(data_root, workdir, first=300, later=0, data__workers=2)
  for line in proc.stdout:  # the first step, compile included, is under way
    if line.startswith("compiling the train step"):
      break
  workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True,
                           check=False).stdout.split()
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  try:
    err, last = _one_line_end(proc)
    ended = time.time()
    time.sleep(1)
    left = [w for w in workers if _running(w)]
  finally:  # a failing run must not leave its workers running
    proc.kill()
    for w in workers:
      if _running(w):
        os.kill(int(w), signal.SIGKILL)
  assert workers and not left  # the data workers ended with it
  assert ended - sent < 30  # not after the 300 s first step
  assert proc.returncode == 128 + signal.SIGTERM
  assert last == ("megan_jax: error: stopped by SIGTERM before the first training step finished: "
                  "nothing to save; rerun the same command to start")
  assert "saving a checkpoint" not in err and "leaked" not in err
  assert checkpointing.saved_steps(checkpointing.checkpoint_dir(workdir)) == []
  assert workdir_lock.LOCK_NAME not in os.listdir(workdir)


def test_sighup_saves_and_stops_like_sigterm(data_root, tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start(data_root, workdir, first=0, later=0.3, data__workers=2)
  _wait_for_steps(proc, workdir, 2)
  os.killpg(proc.pid, signal.SIGHUP)  # as a closed terminal: the data workers get it too
  err, last = _one_line_end(proc)
  assert proc.returncode == 128 + signal.SIGHUP
  assert "received SIGHUP: saving a checkpoint at the end of this step (SIGHUP again stops" in err
  ckpt = checkpointing.checkpoint_dir(workdir)
  step = max(r["step"] for r in logging_utils.read_jsonl(workdir))
  assert last == (f"megan_jax: error: stopped by SIGHUP after step {step}; checkpoint saved in "
                  f"{ckpt}; rerun the same command to resume")
  assert checkpointing.saved_steps(ckpt) == [step]


def test_a_second_ctrl_c_aborts_at_once_in_one_line(data_root, tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start(data_root, workdir, first=0, later=1.5, checkpoint_every=1, data__workers=2)
  _wait_for_steps(proc, workdir, 2)
  os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the data workers get it too
  time.sleep(0.3)  # the step under way takes 1.5 s: the first Ctrl-C's save is still to come
  os.killpg(proc.pid, signal.SIGINT)
  err, last = _one_line_end(proc)
  assert proc.returncode == 128 + signal.SIGINT
  assert "(Ctrl-C again stops at once without saving it)" in err and "KeyboardInterrupt" not in err
  ckpt = checkpointing.checkpoint_dir(workdir)
  steps = checkpointing.saved_steps(ckpt)
  assert steps and last == (
      f"megan_jax: error: aborted by a second SIGINT without saving this step; the checkpoints in "
      f"{ckpt} (steps {steps}) are intact; rerun the same command to resume from step {steps[-1]}")


def test_full_disk_is_one_line(data_root, tmp_path):
  """A real full disk (a 100 kB tmpfs, needs root): the save's error and nothing else."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(disk)],
                         capture_output=True, check=False)
  if mount.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.decode().strip()}")
  try:
    proc = subprocess.run(
        [sys.executable, train_fakes.__file__, "--config=configs/vimeo.py:tiny",
         f"--workdir={disk / 'run'}", *train_fakes.overrides(data_root, num_steps=2)],
        cwd=train_fakes.REPO, capture_output=True, text=True, timeout=180, check=False)
  finally:
    subprocess.run(["umount", str(disk)], check=True)
  assert proc.returncode == 2
  assert re.fullmatch(r"megan_jax: error: saving a checkpoint in \S+ failed \(No space left on "
                      r"device\); no earlier checkpoint exists; fix that and rerun\n",
                      proc.stderr), proc.stderr[-3000:]


if __name__ == "__main__":
  sys.path.insert(0, train_fakes.REPO)
  from absl import app  # pylint: disable=g-import-not-at-top
  from megan_jax import main, train  # pylint: disable=g-import-not-at-top
  _train = train.train_and_evaluate
  train.train_and_evaluate = lambda config, workdir: _train(config, workdir, model=SlowToy())
  app.run(main.main, flags_parser=main._parse)  # pylint: disable=protected-access
