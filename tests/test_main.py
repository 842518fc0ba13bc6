"""python -m megan_jax.main: one-line errors for bad input, SIGTERM saves and resumes."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

import train_fakes
from megan_jax import checkpointing, logging_utils


def _main(*args, script=None, timeout=120):
  cmd = [sys.executable] + ([script] if script else ["-m", "megan_jax.main"]) + list(args)
  return subprocess.run(cmd, cwd=train_fakes.REPO, capture_output=True, text=True,
                        timeout=timeout, check=False)


def _assert_clean_error(proc, *patterns):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr
  for pattern in patterns:
    assert re.search(pattern, proc.stderr), proc.stderr


def test_missing_dataset_names_the_field_and_layout(tmp_path):
  proc = _main("--config=configs/vimeo.py", f"--workdir={tmp_path}",
               f"--config.data.root={tmp_path}/nope")
  _assert_clean_error(proc, re.escape(f"config.data.root: {tmp_path}/nope does not exist"),
                      re.escape("ROOT/sequences/00001/0001/im1.png"), "sep_trainlist.txt")


@pytest.mark.parametrize("override, pattern", [
    ("--config.data.rooot=/x", r"unknown config field config\.data\.rooot"),
    ("--config.nope.deeper=1", r"unknown config field config\.nope\.deeper"),
    ("--config.batch_size=sixteen", r"--config\.batch_size=sixteen: invalid literal for int"),
])
def test_bad_overrides(tmp_path, override, pattern):
  _assert_clean_error(_main("--config=configs/vimeo.py", f"--workdir={tmp_path}", override),
                      pattern)


def test_bad_config_file_and_variant(tmp_path):
  _assert_clean_error(_main("--config=configs/missing.py", f"--workdir={tmp_path}"),
                      r"configs/missing\.py")
  _assert_clean_error(_main("--config=configs/vimeo.py:bogus", f"--workdir={tmp_path}"),
                      r"unknown model variant 'bogus'")


def test_eval_without_checkpoint(tmp_path):
  _assert_clean_error(_main("--config=configs/vimeo.py", f"--workdir={tmp_path}", "--mode=eval"),
                      rf"no checkpoint in workdir '{re.escape(str(tmp_path))}'")


def test_sigterm_saves_exits_nonzero_and_resumes(tmp_path):
  data_root = train_fakes.make_vimeo_tree(str(tmp_path / "vimeo"))
  workdir = str(tmp_path / "run")
  args = ["--config=configs/vimeo.py:tiny", f"--workdir={workdir}"]
  cmd = [sys.executable, train_fakes.__file__] + args + train_fakes.overrides(
      data_root, num_steps=100_000, checkpoint_every=100_000)
  proc = subprocess.Popen(cmd, cwd=train_fakes.REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while len(logging_utils.read_jsonl(workdir)) < 2 and proc.poll() is None:
    assert time.time() < deadline, "training did not start"
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  match = re.search(r"stopped by SIGTERM after step (\d+); checkpoint saved in (\S+);", err)
  assert match and "Traceback" not in err, err[-3000:]
  stopped = int(match.group(1))
  assert match.group(2) == checkpointing.checkpoint_dir(workdir)
  assert checkpointing.restore_params(workdir)[1] == stopped
  resumed = _main(*args, *train_fakes.overrides(data_root, num_steps=stopped + 2),
                  script=train_fakes.__file__)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {stopped}" in resumed.stdout
  assert checkpointing.restore_params(workdir)[1] == stopped + 2
  assert os.path.isdir(os.path.join(workdir, logging_utils.TENSORBOARD_DIR))
