"""Filesystem and checkpoint faults: one clear line naming the path and what to do, nothing lost.

Read-only folders are made with chmod. Root ignores file permissions, so when the tests run as root
the child process gives up the capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)
and meets the folder as any user would; where that is impossible the test is skipped.
"""

import errno
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from PIL import Image

import train_fakes
from megan_jax import checkpointing, logging_utils, train

# A fresh interpreter drops root's permission override (CAP_DAC_OVERRIDE = 1, CAP_DAC_READ_SEARCH
# = 2) from its bounding set (prctl PR_CAPBSET_DROP = 24), so that the program it then execs does
# not get it back (without root, there is nothing to drop); exit 97 if it cannot. A preexec_fn
# would do the same in a fork of the test process, which JAX's threads make unsafe.
_DROP_AND_EXEC = """
import ctypes, os, sys
if os.geteuid() == 0:
  libc = ctypes.CDLL(None, use_errno=True)
  for cap in (1, 2):
    if libc.prctl(24, cap, 0, 0, 0) != 0:
      sys.exit(97)
os.execv(sys.argv[1], sys.argv[1:])
"""


def _as_a_user(cmd: list) -> list:
  """`cmd` run as a user: started by a fresh interpreter that gives up root's override."""
  return [sys.executable, "-c", _DROP_AND_EXEC, *cmd]


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
  """A chmod 555 folder that a child started with `_as_a_user` cannot write (else: skip)."""
  folder = tmp_path_factory.mktemp("read_only")
  os.chmod(folder, 0o555)
  probe = subprocess.run(_as_a_user([sys.executable, "-c", f"open({str(folder / 'x')!r}, 'w')"]),
                         capture_output=True, check=False)
  if probe.returncode == 0 or probe.returncode == 97:
    pytest.skip("cannot make a folder read-only for this user")
  yield folder
  os.chmod(folder, 0o755)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_fakes.make_vimeo_tree(str(tmp_path_factory.mktemp("vimeo")))


def _cli(*args, script=None, timeout=180):
  """`python -m megan_jax.main ARGS` (or the toy-model script), as a user."""
  cmd = [sys.executable] + ([script] if script else ["-m", "megan_jax.main"]) + list(args)
  return subprocess.run(_as_a_user(cmd), cwd=train_fakes.REPO, capture_output=True, text=True,
                        timeout=timeout, check=False)


def _assert_one_line_error(proc, *patterns):
  assert proc.returncode not in (0, 97), proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("megan_jax: error: "), proc.stderr[-3000:]
  for pattern in patterns:
    assert re.search(pattern, last), last


def _toy_train(data_root, *args):
  return _cli("--config=configs/vimeo.py:tiny", *args, *train_fakes.overrides(data_root),
              script=train_fakes.__file__)


def test_workdir_that_is_a_file(tmp_path, data_root):
  path = tmp_path / "a_file"
  path.write_text("")
  _assert_one_line_error(_toy_train(data_root, f"--workdir={path}"),
                         re.escape(f"--workdir: {path} is a file, not a directory"))
  _assert_one_line_error(_cli("--mode=eval", "--config=configs/vimeo.py:tiny", f"--workdir={path}"),
                         re.escape(f"--workdir: {path} is a file, not a run directory"))


@pytest.mark.parametrize("where", ["read-only", "inside read-only", "another user's"])
def test_workdir_that_cannot_be_written(where, read_only, tmp_path, data_root):
  workdir = {"read-only": read_only, "inside read-only": read_only / "run",
             "another user's": tmp_path / "theirs"}[where]
  if where == "another user's":
    if os.geteuid() != 0:
      pytest.skip("making a folder another user's takes root")
    workdir.mkdir()
    os.chown(workdir, 65534, 65534)
  _assert_one_line_error(_toy_train(data_root, f"--workdir={workdir}"),
                         re.escape(f"--workdir: {workdir}: Permission denied; make it writable or "
                                   "choose another path"))


@pytest.mark.parametrize("output", ["out.mp4", "frames"])
def test_infer_output_in_a_read_only_folder(output, read_only, tmp_path):
  frames = tmp_path / "clip"
  frames.mkdir()
  for i in range(2):
    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(frames / f"{i}.png")
  proc = _cli("--mode=infer", "--config=configs/vimeo.py:tiny", f"--workdir={tmp_path / 'run'}",
              f"--config.infer.input={frames}", f"--config.infer.output={read_only / output}")
  folder = read_only if output.endswith(".mp4") else read_only / output
  _assert_one_line_error(proc, re.escape(f"config.infer.output: {folder}: Permission denied"))


def test_checkpoints_folder_turning_read_only_stops_at_once(tmp_path, data_root):
  workdir = tmp_path / "run"
  cmd = [sys.executable, train_fakes.__file__, "--config=configs/vimeo.py:tiny",
         f"--workdir={workdir}"] + train_fakes.overrides(data_root, num_steps=100_000,
                                                         checkpoint_every=5)
  proc = subprocess.Popen(_as_a_user(cmd), cwd=train_fakes.REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  ckpt = checkpointing.checkpoint_dir(str(workdir))
  deadline = time.time() + 180
  while not os.path.isdir(os.path.join(ckpt, "5")) or len(logging_utils.read_jsonl(workdir)) < 7:
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.2)
  os.chmod(ckpt, 0o555)
  turned = time.time()
  try:
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
    os.chmod(ckpt, 0o755)
  if proc.returncode == 97:
    pytest.skip("cannot make a folder read-only for this user")
  assert time.time() - turned < 60  # not orbax's 300 s wait for a folder it could not create
  # the toy's steps are milliseconds: more checkpoints than step 5 may be saved before the chmod
  _assert_one_line_error(subprocess.CompletedProcess(cmd, proc.returncode, "", err),
                         re.escape(f"saving a checkpoint in {ckpt} failed (Permission denied); "
                                   "the earlier checkpoints (steps [5") + r"(, \d+)*\]\) are intact")
  intact = [int(x) for x in re.search(r"steps \[([\d, ]+)\]", err).group(1).split(", ")]
  assert intact == sorted(int(x) for x in os.listdir(ckpt) if x.isdigit())
  assert all(x % 5 == 0 for x in intact)
  assert checkpointing.restore_params(str(workdir))[1] == intact[-1]


def _truncate_largest_file(step_dir: str) -> None:
  files = [f for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)
           if os.path.isfile(f)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 3)


@pytest.fixture(name="toy_run")
def toy_run_fixture(data_root, tmp_path):
  """A toy run of 4 steps with checkpoints at 2 and 4: (config, workdir, {step: loss})."""
  config = train_fakes.fast_config("tiny", data_root)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, train_fakes.ToyModel())
  losses = {r["step"]: r["loss"] for r in logging_utils.read_jsonl(workdir)}
  return config, workdir, losses


def test_truncated_latest_checkpoint_resumes_from_the_previous_one(toy_run, caplog):
  config, workdir, losses = toy_run
  ckpt = checkpointing.checkpoint_dir(workdir)
  _truncate_largest_file(os.path.join(ckpt, "4"))
  config.num_steps = 6
  train.train_and_evaluate(config, workdir, train_fakes.ToyModel())
  moved = os.path.join(workdir, checkpointing.UNREADABLE_DIR, "4")
  assert re.search(rf"checkpoint step 4 in {re.escape(ckpt)} cannot be read \(.+\); using step 2 "
                   rf"instead; moved it to {re.escape(moved)}", caplog.text), caplog.text
  records = logging_utils.read_jsonl(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # each step once
  assert [r["loss"] for r in records[:4]] == [losses[s] for s in (1, 2, 3, 4)]  # steps 3, 4 redone
  assert checkpointing.make_manager(workdir).all_steps() == [2, 4, 6]


def test_eval_falls_back_past_an_unreadable_checkpoint(toy_run, caplog):
  config, workdir, _ = toy_run
  ckpt = checkpointing.checkpoint_dir(workdir)
  _truncate_largest_file(os.path.join(ckpt, "4"))
  params, step = checkpointing.restore_params(workdir)
  assert step == 2 and all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert f"checkpoint step 4 in {ckpt} cannot be read" in caplog.text
  with pytest.raises(checkpointing.CheckpointError, match=r"no readable checkpoint .*: step 4 \("):
    checkpointing.restore_params(workdir, 4)  # asked for by number: no silent substitute
  _truncate_largest_file(os.path.join(ckpt, "2"))
  with pytest.raises(checkpointing.CheckpointError,
                     match=rf"no readable checkpoint in {re.escape(ckpt)}: step 4 .*, step 2 "):
    checkpointing.restore_params(workdir)
  config.num_steps = 6
  with pytest.raises(checkpointing.CheckpointError, match="no readable checkpoint"):
    train.train_and_evaluate(config, workdir, train_fakes.ToyModel())
  assert sorted(os.listdir(ckpt)) == ["2", "4"]  # nothing moved or deleted when none is readable


def _fail_saves_from(step: int, monkeypatch):
  """Makes orbax's saves from `step` on fail as on a full disk."""
  real_save = checkpointing.ocp.CheckpointManager.save

  def save(self, s, *args, **kwargs):
    if s >= step:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, s, *args, **kwargs)

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", save)


def _assert_disk_full_keeps_earlier(config, workdir, steps):
  with pytest.raises(checkpointing.CheckpointError) as info:
    train.train_and_evaluate(config, workdir, train_fakes.ToyModel())
  ckpt = checkpointing.checkpoint_dir(workdir)
  assert str(info.value) == (
      f"saving a checkpoint in {ckpt} failed (No space left on device); the earlier checkpoints "
      f"(steps {steps}) are intact; fix that and rerun to resume from step 4")
  for step in steps:
    params, restored = checkpointing.restore_params(workdir, step)
    assert restored == step and all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_failed_save_keeps_the_earlier_checkpoints(data_root, tmp_path, monkeypatch):
  _fail_saves_from(6, monkeypatch)
  config = train_fakes.fast_config("tiny", data_root, num_steps=8, keep_checkpoints=1)
  _assert_disk_full_keeps_earlier(config, str(tmp_path / "run"), [4])  # 4 not deleted for 6


def test_full_disk_keeps_the_earlier_checkpoints(toy_run, data_root, tmp_path):
  """A real full disk: a tmpfs with room for 2.5 checkpoints (needs root to mount)."""
  _, done, _ = toy_run
  one = sum(os.path.getsize(f) for f in glob.glob(
      os.path.join(checkpointing.checkpoint_dir(done), "2", "**", "*"), recursive=True)
      if os.path.isfile(f))
  disk = tmp_path / "disk"
  disk.mkdir()
  mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(2.5 * one) // 4096 * 4096}",
                          "tmpfs", str(disk)], capture_output=True, check=False)
  if mount.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.decode().strip()}")
  try:
    config = train_fakes.fast_config("tiny", data_root, num_steps=20, keep_checkpoints=2)
    _assert_disk_full_keeps_earlier(config, str(disk / "run"), [2, 4])
  finally:
    subprocess.run(["umount", str(disk)], check=True)


def test_changed_model_width_names_the_workdir_and_fields(toy_run):
  config, workdir, _ = toy_run
  config.model.nf = 12  # the toy model was 8 wide, like the tiny config's nf
  config.num_steps = 6
  with pytest.raises(checkpointing.ArchitectureError) as info:
    train.train_and_evaluate(config, workdir, train_fakes.ToyModel(width=12))
  message = str(info.value)
  assert f"--workdir={workdir} (step 4)" in message
  assert re.search(r"Conv_0/kernel: \(3, 3, 3, 8\) in the checkpoint, \(3, 3, 3, 12\) in the config",
                   message), message
  assert "config.model fields changed since" in message and "nf (8 -> 12)" in message
  assert "strict" not in message
  assert checkpointing.make_manager(workdir).all_steps() == [2, 4]


def test_data_root_that_is_a_file(tmp_path):
  path = tmp_path / "vimeo.zip"
  path.write_text("")
  with pytest.raises(NotADirectoryError, match=re.escape(f"config.data.root: {path} is a file")):
    train.validate_config(train_fakes.fast_config("tiny", str(path)))


def test_fewer_steps_than_the_checkpoint_says_so(toy_run, capsys):
  config, workdir, _ = toy_run
  config.num_steps = 2
  assert train.train_and_evaluate(config, workdir, train_fakes.ToyModel()) == {}
  out = capsys.readouterr().out
  assert (f"nothing to train: {checkpointing.checkpoint_dir(workdir)} holds step 4, past "
          f"config.num_steps=2") in out
  assert checkpointing.make_manager(workdir).all_steps() == [2, 4]
  assert [r["step"] for r in logging_utils.read_jsonl(workdir)] == [1, 2, 3, 4]


def _tensorboard_scalars(workdir) -> dict:
  """{(tag, step): [values]} as TensorBoard shows them: a SessionLog START at step s (a resumed
  run's `purge_step`) hides the events of earlier files at steps >= s."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  shown = {}
  for path in sorted(glob.glob(os.path.join(workdir, logging_utils.TENSORBOARD_DIR, "*")),
                     key=os.path.getmtime):
    data, offset = open(path, "rb").read(), 0
    while offset < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      length = int.from_bytes(data[offset:offset + 8], "little")
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        shown = {k: v for k, v in shown.items() if k[1] < event.step}
      for v in event.summary.value:
        shown.setdefault((v.tag, event.step), []).append(v.simple_value)
  return shown


def test_logs_hold_each_step_once_after_a_resume(toy_run):
  """A run killed after logging steps 3 and 4 but before checkpointing step 4 (kill -9), resumed."""
  config, workdir, _ = toy_run
  shutil.rmtree(os.path.join(checkpointing.checkpoint_dir(workdir), "4"))
  with open(os.path.join(workdir, logging_utils.JSONL_NAME), "a", encoding="utf-8") as f:
    f.write('{"step": 5, "loss": 0.')  # a record cut short by the kill
  time.sleep(1.1)  # tensorboardX names event files by the second
  with open(os.path.join(workdir, logging_utils.JSONL_NAME), encoding="utf-8") as f:
    logged = f.readlines()[2:4]  # the complete records of steps 3 and 4
  config.num_steps = 5
  train.train_and_evaluate(config, workdir, train_fakes.ToyModel())
  assert [r["step"] for r in logging_utils.read_jsonl(workdir)] == [1, 2, 3, 4, 5]
  with open(os.path.join(workdir, logging_utils.REPLAYED_NAME), encoding="utf-8") as f:
    assert f.readlines() == logged  # kept, out of the way of the steps trained again
  shown = _tensorboard_scalars(workdir)
  assert sorted(s for tag, s in shown if tag == "loss") == [1, 2, 3, 4, 5]
  assert all(len(v) == 1 for v in shown.values())


def test_kill_9_and_resume_keeps_each_step_once(tmp_path, data_root):
  workdir = str(tmp_path / "run")
  args = ["--config=configs/vimeo.py:tiny", f"--workdir={workdir}"]
  cmd = [sys.executable, train_fakes.__file__] + args + train_fakes.overrides(
      data_root, num_steps=100_000, checkpoint_every=5)
  proc = subprocess.Popen(cmd, cwd=train_fakes.REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 180
  while len(logging_utils.read_jsonl(workdir)) < 8:  # past the checkpoint of step 5
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  logged = max(r["step"] for r in logging_utils.read_jsonl(workdir))
  resumed = subprocess.run([sys.executable, train_fakes.__file__] + args + train_fakes.overrides(
      data_root, num_steps=logged + 2, checkpoint_every=5), cwd=train_fakes.REPO,
      capture_output=True, text=True, timeout=180, check=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert [r["step"] for r in logging_utils.read_jsonl(workdir)] == list(range(1, logged + 3))
  assert json.loads(resumed.stdout.split("RESULT ")[-1])["loss"] > 0


def test_orbax_write_never_run_after_a_failed_save_is_not_reported():
  """An aborted save leaves orbax's write coroutine un-run; Python reports it at exit as a
  RuntimeWarning after the one-line error. Only orbax's writes are silenced: another coroutine
  that was never awaited is still reported."""
  code = textwrap.dedent("""
      import gc
      import megan_jax.orbax_noise
      def async_serialize_from_host():
        async def write_fragment():
          pass
        return write_fragment()
      async def user_coroutine():
        pass
      orbax_write, other = async_serialize_from_host(), user_coroutine()
      del orbax_write, other
      gc.collect()
      """)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert "write_fragment" not in proc.stderr
  assert "coroutine 'user_coroutine' was never awaited" in proc.stderr
