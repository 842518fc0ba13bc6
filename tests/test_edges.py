"""The edges of issue 30: concurrent runs on one workdir, non-finite starts, signals in windows
where they cannot be acted on at once, sizes the model cannot index. Each test states the
user-visible outcome: what is on disk, the one line printed, the exit status."""

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import train_fakes
from megan_jax import (checkpointing, config_check, evaluate, plots, pretrained, report,
                       repro, stop_signals, train)
from megan_jax.data.pipeline import make_train_iter, open_eval_dataset
from megan_jax.data.sources import DataError

MODEL = train_fakes.ToyModel()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_fakes.make_vimeo_tree(str(tmp_path_factory.mktemp("vimeo")), num_clips=4)


def test_two_evals_of_one_step_keep_both_columns(tmp_path):
  """Two evals of one checkpoint started together (other test sets) each read the table before
  either wrote it: the second to write keeps the first's column."""
  mean = lambda v: {"psnr_y": v, "ssim_y": 0.5, "psnr_rgb": v}
  a, b = report.StepTable(str(tmp_path), 7), report.StepTable(str(tmp_path), 7)
  a.add("setA", {"root": "/a"}, {"MEGAN": mean(30.0), "Bicubic+blending": mean(25.0)})
  b.add("setB", {"root": "/b"}, {"MEGAN": mean(31.0), "Bicubic+blending": mean(26.0)})
  a.write()
  b.write()
  with open(tmp_path / "summary.json", encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["summary"]["MEGAN"] == {"setA": mean(30.0), "setB": mean(31.0)}
  assert set(saved["sources"]) == {"setA", "setB"}
  table = (tmp_path / "table.txt").read_text()
  assert "setA" in table and "setB" in table and "30.00/0.5000" in table
  assert sorted(os.listdir(tmp_path)) == ["summary.json", "table.md", "table.txt"]


def test_non_finite_pretrained_is_refused_before_anything_is_written(data_root, tmp_path):
  """Right shapes, NaN values: refused in one line naming the file, and the workdir is not
  poisoned (a rerun with a good file starts)."""
  config = train_fakes.fast_config("tiny", data_root, num_steps=1)
  workdir = str(tmp_path / "run")
  good = jax.jit(lambda: MODEL.init({"params": jax.random.key(0), "lmga": jax.random.key(1)},
                                    jnp.zeros((1, 4, 8, 8, 3)))["params"])()
  bad = str(tmp_path / "nan.npz")
  pretrained.save(bad, jax.tree.map(lambda x: np.full(x.shape, np.nan, np.float32), good), {})
  config.pretrained = bad
  with pytest.raises(ValueError) as info:
    train.train_and_evaluate(config, workdir, MODEL)
  message = str(info.value)
  assert message.startswith(f"config.pretrained: {bad} holds NaN or Inf in 4 of its 4 arrays")
  assert message.endswith(f"Nothing was written to {workdir}") and "\n" not in message
  assert not checkpointing.has_checkpoints(workdir)
  config.pretrained = str(tmp_path / "good.npz")
  pretrained.save(config.pretrained, good, {})
  train.train_and_evaluate(config, workdir, MODEL)
  assert checkpointing.saved_steps(checkpointing.checkpoint_dir(workdir)) == [0, 1]


def _script(workdir: str, *args, env=None, **fields) -> subprocess.Popen:
  """This file as `python -m megan_jax.main` with the toy model (see the end of the file)."""
  cmd = [sys.executable, __file__, "--config=configs/vimeo.py:tiny", f"--workdir={workdir}", *args]
  if "data_root" in fields:
    cmd += train_fakes.overrides(fields.pop("data_root"), **fields)
  return subprocess.Popen(cmd, cwd=train_fakes.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, **(env or {})}, start_new_session=True)


def _wait_for(proc, text: str) -> None:
  for line in proc.stdout:
    if line.startswith(text):
      return
  raise AssertionError(f"{text!r} never printed: {proc.communicate()[1][-3000:]}")


def _one_line_end(proc, timeout: float = 60) -> tuple[str, str]:
  try:
    _, err = proc.communicate(timeout=timeout)
  finally:
    proc.kill()
  assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
  lines = err.strip().splitlines()
  assert lines, f"exit status {proc.returncode} and nothing on stderr: the signal was dropped"
  return err, lines[-1]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_while_the_data_workers_start_is_acted_on(signum, data_root, tmp_path):
  """A terminal's Ctrl-C or hang-up (to the whole process group) while the first batch starts
  grain's workers, a window in which the run shields its children: one line, 128 + n, at once;
  the children end with it."""
  workdir = str(tmp_path / "run")
  proc = _script(workdir, env={"EDGE_WINDOW": "20"}, data_root=data_root, num_steps=2,
                 data__workers=2)
  _wait_for(proc, "in the window")
  workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True,
                           check=False).stdout.split()
  sent = time.time()
  os.killpg(proc.pid, signum)
  err, last = _one_line_end(proc)
  assert time.time() - sent < 15, err  # not at the end of the 20 s window
  assert proc.returncode == 128 + signum, err[-3000:]
  assert last == (f"megan_jax: error: stopped by {signal.Signals(signum).name} before the first "
                  f"training step finished: nothing to save; rerun the same command to start")
  assert workers and not checkpointing.has_checkpoints(workdir)
  time.sleep(0.5)
  assert not [w for w in workers if os.path.exists(f"/proc/{w}")
              and open(f"/proc/{w}/stat", encoding="utf-8").read().rsplit(")", 1)[1].split()[0]
              != "Z"]


def _params_run(workdir: str, steps) -> str:
  """A run folder whose checkpoints `steps` hold the toy model's parameters."""
  params = jax.jit(lambda: MODEL.init(jax.random.key(0), jnp.zeros((1, 4, 8, 8, 3)))["params"])()
  manager = checkpointing.make_manager(workdir, async_save=False)
  for step in steps:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})),
                 force=True)
  manager.close()
  return workdir


def _hold_lock(workdir: str) -> subprocess.Popen:
  """A process holding WORKDIR/.lock as a running training does."""
  code = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX);"
          " f.write(str(os.getpid())); f.flush(); print('locked', flush=True); time.sleep(120)")
  child = subprocess.Popen([sys.executable, "-c", code, os.path.join(workdir, ".lock")],
                           stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == "locked"
  return child


def test_compare_and_eval_while_a_training_deletes_the_step_they_read(tmp_path, monkeypatch):
  """A training keeping its last checkpoints deletes the step another command is reading: compare
  reads the step both runs hold now; a given step says a training is writing the folder, and
  never advises moving it away."""
  a, b = _params_run(str(tmp_path / "a"), [1, 2]), _params_run(str(tmp_path / "b"), [1, 2])
  restore = ocp.CheckpointManager.restore

  def deleted_while_read(manager, step, *args, **kwargs):
    path = os.path.join(str(manager.directory), str(step))
    if path == os.path.join(checkpointing.checkpoint_dir(a), "2"):  # A saved 3, dropped 2
      shutil.copytree(path, os.path.join(str(manager.directory), "3"), dirs_exist_ok=True)
      shutil.rmtree(path)
    return restore(manager, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", deleted_while_read)
  # orbax's warning for the deleted step's metadata is dropped; one for a step still there is kept
  record = lambda path: logging.LogRecord("absl", logging.WARNING, __file__, 1,
                                          f"Metadata file does not exist: {path}", None, None)
  absl_filter = logging.getLogger("absl").filter
  assert not absl_filter(record(f"{a}/checkpoints/7/_CHECKPOINT_METADATA"))
  assert absl_filter(record(f"{checkpointing.checkpoint_dir(a)}/1/_CHECKPOINT_METADATA"))
  lines, identical = repro._checkpoint_lines(a, b, None)  # pylint: disable=protected-access
  assert identical and lines[0].startswith("checkpoint step 1: parameters identical")

  # eval's latest step deleted as it is read (keep_checkpoints=1, a save every step): the newer one
  shutil.copytree(os.path.join(checkpointing.checkpoint_dir(a), "3"),
                  os.path.join(checkpointing.checkpoint_dir(a), "2"))
  shutil.rmtree(os.path.join(checkpointing.checkpoint_dir(a), "3"))
  assert checkpointing.restore_params(a)[1] == 3  # 2 was read, deleted; 3 saved meanwhile
  shutil.copytree(os.path.join(checkpointing.checkpoint_dir(a), "3"),
                  os.path.join(checkpointing.checkpoint_dir(a), "2"))
  holder = _hold_lock(a)
  try:
    with pytest.raises(checkpointing.CheckpointError) as info:
      checkpointing.restore_params(a, 2)
  finally:
    holder.kill()
  message = str(info.value)
  assert f"step 2 (deleted while it was read); {os.path.abspath(a)} is being written by a " \
         f"running training (PID {holder.pid})" in message
  assert "move the folder away" not in message and "backup" not in message


def test_a_crop_the_model_cannot_index_is_refused_before_init(data_root):
  """data.crop=100000 was a 71-line int32 OverflowError from inside the model's init; the
  largest side allowed is the exact limit of the deformable sampling's indices."""
  config = train_fakes.fast_config("tiny", data_root, data__crop=100000)
  with pytest.raises(ValueError) as info:
    config_check.check(config)
  side = config_check.max_side(config)
  assert str(info.value) == (
      f"config.data.crop: 100000; the model cannot index frames that large (its deformable "
      f"sampling has int32 indices: (side + 1)^2 x model.groups < 2^31): at most {side} for "
      f"model.groups={config.model.groups}")
  config.data.crop = side
  config_check.check(config)
  pretrained.expected_params(config)  # traces the model's init at that size: no overflow
  config.data.crop = side + 4
  with pytest.raises(OverflowError):
    pretrained.expected_params(config)


def test_a_crop_larger_than_the_frames_is_refused_before_init(data_root):
  """data.crop=1000 met its clear line only after the model's init at that size (15 s)."""
  config = train_fakes.fast_config("tiny", data_root, data__crop=1000)
  start = time.time()
  with pytest.raises(ValueError) as info:
    train.validate_config(config)
  assert time.time() - start < 5
  assert str(info.value) == (
      f"config.data.crop: 1000 is larger than the 24x16 LR frames of the training data "
      f"({data_root}/sequences/00001/0001); the crop is in LR pixels: at most 16 here")


def test_clip_names_in_any_script_plot_without_glyph_warnings(tmp_path):
  frames = [{"index": i, "psnr_y": 30.0 + i, "interpolated": i % 2 == 1} for i in range(3)]
  clips = [{"name": "日本の猫", "frames": frames}, {"name": "Ünïcødé", "frames": frames}]
  results = {m: {"clips": clips} for m in ("MEGAN", "Bicubic+blending")}
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # matplotlib's "Glyph 26085 ... missing from font(s)"
    drawn = plots.plot_psnr_per_frame(str(tmp_path / "p.png"), results, title="集合",
                                      model="MEGAN", baseline="Bicubic+blending")
  assert [c["name"] for c in drawn] == ["日本の猫", "Ünïcødé"]
  assert plots.drawable("日本 Ünï") == "\\u65e5\\u672c Ünï"  # Latin-1 the font has


def test_a_wrong_file_or_workdir_leaves_no_empty_folder(tmp_path):
  """The converter given a .npz of other tensors, export given a workdir that does not exist: one
  error, and no folder made on the way."""
  # convert defines absl flags that main's (this file run as a script) would clash with
  from megan_jax import convert  # pylint: disable=import-outside-toplevel
  wrong = str(tmp_path / "other.npz")
  np.savez(wrong, **{"encoder.weight": np.zeros((4, 3, 3, 3), np.float32)})
  workdir = str(tmp_path / "converted")
  with pytest.raises(convert.ConversionError, match=f"^{re.escape(wrong)}: "):
    convert.convert(wrong, workdir)
  assert not os.path.exists(workdir)

  config = train_fakes.fast_config("tiny", str(tmp_path))
  missing = str(tmp_path / "no_such_run")
  with pytest.raises(FileNotFoundError, match="no checkpoint in workdir"):
    pretrained.export(config, missing, "configs/vimeo.py")
  assert not os.path.exists(missing)


def test_frames_too_small_to_score_name_the_clip(tmp_path):
  clip = tmp_path / "set" / "dot"
  clip.mkdir(parents=True)
  for t in range(7):
    Image.fromarray(np.full((1, 1, 3), 100, np.uint8)).save(clip / f"{t}.png")
  (seq,) = open_eval_dataset(ml_collections.ConfigDict({"kind": "folders",
                                                        "root": str(tmp_path / "set")}))
  with pytest.raises(DataError) as info:
    evaluate.evaluate_sequences(evaluate.baseline_predict_fn, [seq], progress=False)
  assert str(info.value) == (
      f"{clip}: frames are 1x1 pixels; a clip to score needs at least 4x4 (the GT is cut to "
      f"multiples of 4, the LR input is a quarter of it): leave it out of the test set")


def test_compare_counts_a_fingerprint_logged_by_one_run_only_as_no_difference():
  """Run A was stopped by a signal at step 3 and saved there; B went on: A logged fingerprints at
  step 3 and B did not. Every value both runs logged agrees."""
  same = {"loss": 0.25, "lr": 1e-4}
  prints = {"fingerprints.params": "e56d", "fingerprints.data": "01ab"}
  a = {2: {**same, **prints}, 3: {**same, **prints}, 4: dict(same)}
  b = {2: {**same, **prints}, 3: dict(same), 4: {**same, **prints}}
  lines, same_logs = repro._log_lines(a, b)  # pylint: disable=protected-access
  assert same_logs, lines
  assert lines == ["logs: all 3 common steps agree (losses and the fingerprints of 1 checkpoints, "
                   "bit for bit)", "  (steps [3, 4]: one run saved a checkpoint there and the "
                   "other did not; nothing to compare, not a difference)"]
  b[2] = {**same, **prints, "fingerprints.params": "ffff"}  # a real difference still counts
  lines, same_logs = repro._log_lines(a, b)  # pylint: disable=protected-access
  assert not same_logs and lines == [
      "first difference at step 2: fingerprints.params 'e56d' vs 'ffff'"]


def test_a_partial_vimeo_copy_points_at_its_own_list(data_root, tmp_path):
  """The paper's command (the packaged 'train' list) on a copy of a few septuplets that has its
  own sep_trainlist.txt: the line says which list file to give."""
  config = train_fakes.fast_config("tiny", data_root, data__list_file="train")
  with pytest.raises(DataError) as info:
    train.validate_config(config)
  own = os.path.join(data_root, "sep_trainlist.txt")
  assert str(info.value).endswith(
      f"; the list is the packaged 'train' (64612 clips), and {data_root} has its own "
      f"sep_trainlist.txt: give it as the list file (--config.data.list_file={own} for training)")
  assert str(info.value).startswith(f"{data_root}/sequences: 64608 GT clip folders of the list")


def test_reading_threads_are_all_used_without_a_warning(data_root, caplog):
  """config.data.read_threads=4 (configs/vimeo.py's) printed grain's "prefetch_buffer_size=2 is
  smaller than num_threads=4" W-line before the run's summary, and used 2 of the 4 threads."""
  config = train_fakes.fast_config("tiny", data_root, data__read_threads=4)
  batch = next(make_train_iter(config.data, batch_size=2, seed=0))
  assert batch["lr"].shape == (2, 4, 8, 8, 3)
  assert not [r for r in caplog.records if "prefetch_buffer_size" in r.getMessage()]


def test_two_commands_starting_one_workdir_from_pretrained_share_its_step_0(tmp_path):
  """An eval and a training (or two evals) started together on an empty workdir with the same
  config.pretrained: the second waits for the first's step 0 and uses it; it was refused with
  "in use by another training run ... stop it (kill PID)"."""
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  params = jax.jit(lambda: MODEL.init(jax.random.key(0), jnp.zeros((1, 4, 8, 8, 3)))["params"])()
  config = train_fakes.fast_config("tiny", str(tmp_path), pretrained=str(tmp_path / "p.npz"))
  pretrained.save(config.pretrained, params, {})
  holder = _hold_lock(workdir)  # the first command, writing step 0 under the lock
  try:
    threading.Timer(1.0, checkpointing.save_params, [workdir, params]).start()
    assert pretrained.start_workdir(config, workdir, expected=params) is None
  finally:
    holder.kill()
  assert checkpointing.saved_steps(checkpointing.checkpoint_dir(workdir)) == [0]


def test_eval_and_compare_of_a_training_that_saved_nothing_yet_say_so(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  holder = _hold_lock(workdir)
  try:
    with pytest.raises(FileNotFoundError) as info:
      checkpointing.restore_params(workdir)
    with pytest.raises(ValueError) as compare_info:
      repro.compare(workdir, workdir)
  finally:
    holder.kill()
  assert str(info.value) == (
      f"no checkpoint in workdir {workdir!r} yet: it is being written by a running training (PID "
      f"{holder.pid}); rerun once it has saved its first checkpoint (config.checkpoint_every)")
  assert str(compare_info.value) == (
      f"compare: {workdir} is being written by a running training (PID {holder.pid}) that has "
      f"not recorded its config.json yet; rerun in a moment")


_IMPORTING = """
import os, runpy, signal, sys
class SignalOnImport:  # the signal lands while megan_jax.main imports ml_collections
  def find_spec(self, name, path=None, target=None):
    if name == "ml_collections":
      os.kill(os.getpid(), signal.SIGTERM)
sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["megan_jax.main", "--config=configs/vimeo.py", "--mode=config"]
runpy.run_module("megan_jax.main", run_name="__main__", alter_sys=True)
"""


def test_a_signal_where_no_run_handles_signals_is_one_line(tmp_path):
  """SIGTERM while the program imports, and during --mode=export (no run's handler there): one
  line and 128 + 15, where it was a silent death (and Ctrl-C a KeyboardInterrupt traceback)."""
  proc = subprocess.run([sys.executable, "-c", _IMPORTING], cwd=train_fakes.REPO, text=True,
                        capture_output=True, timeout=120, check=False)
  assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, proc.stderr[-2000:])
  assert proc.stderr.strip().splitlines() == [
      "megan_jax: error: stopped by SIGTERM while starting; nothing was written: rerun the same "
      "command"]

  workdir = _params_run(str(tmp_path / "run"), [1])
  proc = _script(workdir, "--mode=export", env={"EDGE_SIGNAL_IN_EXPORT": "1"})
  err, last = _one_line_end(proc)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert last == ("megan_jax: error: stopped by SIGTERM; what was already saved is kept: rerun "
                  "the same command to continue")
  assert os.listdir(workdir) == ["checkpoints"]


class _SignalInGC:
  """An object whose finaliser receives a Ctrl-C, as jax's `_xla_gc_callback` did during infer's
  compile: Python drops an exception raised there ("Exception ignored in ...")."""

  def __del__(self):
    signal.raise_signal(signal.SIGINT)
    sum(range(1000))  # the handler runs here, inside the finaliser


def test_ctrl_c_landing_in_a_finaliser_still_stops_the_run(capfd):
  start = time.time()
  with pytest.raises(stop_signals.Interrupted) as info:
    with stop_signals.stop_on_signals("--mode=infer", "nothing was written"):
      _SignalInGC()  # dropped at once: its finaliser runs here
      while time.time() < start + 30:  # the work the run would have gone on with
        pass
  assert info.value.exit_code == 128 + signal.SIGINT and time.time() < start + 10
  assert str(info.value) == "stopped by SIGINT (Ctrl-C) during --mode=infer; nothing was written"
  assert "Exception ignored" not in capfd.readouterr().err


if __name__ == "__main__":
  sys.path.insert(0, train_fakes.REPO)
  from absl import app  # pylint: disable=g-import-not-at-top
  from megan_jax import main  # pylint: disable=g-import-not-at-top
  _train = train.train_and_evaluate
  train.train_and_evaluate = lambda config, workdir: _train(config, workdir, model=MODEL)
  if "EDGE_WINDOW" in os.environ:  # hold the window in which the data workers start open
    _sparing = stop_signals.StopSignals.sparing_children

    @contextlib.contextmanager
    def _held_open(self, *args):
      with _sparing(self, *args):
        yield
        print("in the window", flush=True)
        time.sleep(float(os.environ["EDGE_WINDOW"]))

    stop_signals.StopSignals.sparing_children = _held_open
  if "EDGE_SIGNAL_IN_EXPORT" in os.environ:  # a SIGTERM while the parameters are read
    def _export(*args):
      del args
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(30)
    pretrained.export = _export
  app.run(main.main, flags_parser=main._parse)  # pylint: disable=protected-access
