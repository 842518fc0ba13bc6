"""infer never overwrites or loses what a user has, and every fault is one line (issue 22).

The output is never the input; an existing file or non-empty frame folder is kept unless
config.infer.overwrite; outputs appear only when complete (a signal or an error leaves the output
as it was, with no temporary file); bad inputs, containers, fps and time are refused before
anything is written; Ctrl-C during infer or eval ends in one line with exit code 130. The
numpy stand-in `infer_fakes.nearest_predict` replaces the model: nothing here compiles MEGAN.
"""

import hashlib
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import infer_fakes
from megan_jax import stop_signals
from megan_jax.infer import infer, preflight

from configs import vimeo  # pylint: disable=wrong-import-order

N, H, W = 5, 6, 8


def _frames(n=N, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), np.uint8)  # (N, H, W, 3)


def _config(source, output, **fields):
  config = vimeo.get_config("tiny")
  config.infer.progress = False
  config.infer.input, config.infer.output = str(source), str(output)
  for k, v in fields.items():
    config.infer[k] = v
  return config


def _digest(path):
  """A fingerprint of a file, or of a folder's file names and contents."""
  if os.path.isfile(path):
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  return {n: _digest(os.path.join(path, n)) for n in sorted(os.listdir(path))}


def _upscaled(frames):
  """The stand-in's 2x output, by hand: inputs repeated 4x4, the means of neighbours between."""
  up = [f.astype(np.float64).repeat(4, 0).repeat(4, 1) for f in frames]
  out = []
  for a, b in zip(up, up[1:] + [None]):
    out += [a] if b is None else [a, (a + b) / 2]
  return out


@pytest.fixture
def source(tmp_path):
  return infer_fakes.write_frames(tmp_path / "src", _frames())


def _run(config, tmp_path, predict_fn=infer_fakes.nearest_predict):
  return infer(config, str(tmp_path / "workdir"), predict_fn=predict_fn)


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_that_is_the_input_is_refused(tmp_path, spelling, overwrite):
  video = tmp_path / "ok.mp4"
  infer_fakes.write_video(str(video), _frames(), 10)
  before = _digest(video)
  output = {"same": video, "dot": f"{tmp_path}/./ok.mp4", "symlink": tmp_path / "link.mp4"}[spelling]
  if spelling == "symlink":
    os.symlink(video, output)
  with pytest.raises(ValueError, match=r"config.infer.output: .* is config.infer.input: .*choose "
                                       r"another path"):
    _run(_config(video, output, overwrite=overwrite), tmp_path)
  assert _digest(video) == before


def test_frame_folder_output_into_its_input_is_refused(tmp_path, source):
  before = _digest(source)
  for overwrite in (False, True):
    with pytest.raises(ValueError, match="is config.infer.input"):
      _run(_config(source, source, overwrite=overwrite), tmp_path)
  assert _digest(source) == before


def test_existing_video_is_kept_unless_overwrite(tmp_path, source):
  output = tmp_path / "out.mp4"
  output.write_bytes(b"the user's own video")
  with pytest.raises(FileExistsError, match=re.escape(
      f"config.infer.output: {output} already exists; choose another path or set "
      "--config.infer.overwrite=True to replace it")):
    _run(_config(source, output), tmp_path)
  assert output.read_bytes() == b"the user's own video"
  _run(_config(source, output, overwrite=True), tmp_path)
  rate, frames = infer_fakes.read_video(str(output))
  assert rate == 2 * 30 and len(frames) == 2 * N - 1  # a frame folder is 30 fps by default
  assert sorted(os.listdir(tmp_path)) == ["out.mp4", "src"]  # no temporary file left


def _dead_pid():
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid  # exited and reaped: no process has it (until the system reuses it)


@pytest.mark.parametrize("output_name", ["out.mp4", "frames"])
def test_temporaries_of_killed_runs_are_removed_and_said(tmp_path, source, output_name, capsys):
  """A run killed by SIGKILL cannot remove its temporary; the next run writing there does, and
  says so. A temporary of a process that still runs (another infer) is left alone, and in a frame
  folder it is an entry like any other (the folder is refused unless overwrite)."""
  output = tmp_path / output_name
  alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    if output_name == "frames":
      output.mkdir()
      dead, live = output / f".partial-{_dead_pid()}", output / f".partial-{alive.pid}"
      dead.mkdir()
    else:
      dead = tmp_path / f".out.mp4.partial-{_dead_pid()}.mp4"
      live = tmp_path / f".out.mp4.partial-{alive.pid}.mp4"
      dead.write_bytes(b"half a video")
      live.write_bytes(b"half another")
    _run(_config(source, output), tmp_path)
    assert not dead.exists()
    assert f"removed {dead}, left by an earlier run that was killed while writing" in (
        capsys.readouterr().out)
    if output_name == "frames":
      live.mkdir()
      with pytest.raises(FileExistsError, match=r"already holds 10 entries \(9 of them images\)"):
        _run(_config(source, output), tmp_path)
    else:
      os.remove(output)
      _run(_config(source, output), tmp_path)
    assert live.exists()
  finally:
    alive.kill()
    alive.wait()


def test_frame_folder_with_frames_is_kept_unless_overwrite(tmp_path, source):
  output = infer_fakes.write_frames(tmp_path / "out", _frames(23, seed=1), name="{:06d}.png")
  (tmp_path / "out" / "notes.txt").write_text("mine")
  before = _digest(output)
  with pytest.raises(FileExistsError, match=re.escape(
      f"config.infer.output: the folder {output} already holds 24 entries (23 of them images); "
      "choose another path or set --config.infer.overwrite=True to replace its images")):
    _run(_config(source, output), tmp_path)
  assert _digest(output) == before
  _run(_config(source, output, overwrite=True), tmp_path)
  names = sorted(os.listdir(output))
  assert names == [f"{i:06d}.png" for i in range(2 * N - 1)] + ["notes.txt"]  # stale 9-22 gone
  for i, (got, want) in enumerate(zip(infer_fakes.read_frames(output), _upscaled(list(_frames())))):
    np.testing.assert_allclose(got, want, rtol=0, atol=i % 2)  # means: float32 rounding of x.5


def test_empty_folder_is_written_without_overwrite(tmp_path, source):
  (tmp_path / "empty").mkdir()
  _run(_config(source, tmp_path / "empty"), tmp_path)
  assert len(os.listdir(tmp_path / "empty")) == 2 * N - 1


@pytest.mark.parametrize("output", ["out.mp4", "frames"])
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "error"])
@pytest.mark.parametrize("existing", [False, True])
def test_a_stopped_run_leaves_the_output_as_it_was(tmp_path, source, output, stop, existing):
  path = tmp_path / output
  if existing:
    if output == "frames":
      infer_fakes.write_frames(path, _frames(3, seed=2))
    else:
      path.write_bytes(b"old")
  before = _digest(path) if existing else None
  config = _config(source, path, overwrite=True)
  if stop == "error":
    def failing(lr):
      if failing.calls:
        raise ValueError("the model failed")
      failing.calls += 1
      return infer_fakes.nearest_predict(lr)
    failing.calls = 0
    with pytest.raises(ValueError, match="the model failed"):
      _run(config, tmp_path, failing)
  else:
    signum = getattr(signal, stop)
    with pytest.raises(stop_signals.Interrupted, match=f"stopped by {stop}.* during --mode=infer; "
                                                  f"nothing was written to {path}") as e:
      _run(config, tmp_path, infer_fakes.signalling(signum))
    assert e.value.exit_code == 128 + signum
  assert (_digest(path) if existing else os.path.exists(path)) == (before if existing else False)
  leftovers = [n for n in os.listdir(tmp_path) + (os.listdir(path) if path.is_dir() else [])
               if "partial" in n]
  assert not leftovers
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


@pytest.mark.parametrize("output", ["out.webm", "frames.png", "clip.MP4.gif"])
def test_unsupported_container_is_refused_listing_the_supported_ones(tmp_path, source, output):
  with pytest.raises(ValueError, match=re.escape(
      f"config.infer.output: {tmp_path / output}: {os.path.splitext(output)[1].lower()} is not a "
      "container this writes; give a video file ending in .mp4, .mkv, .mov, .avi, or a folder")):
    preflight(_config(source, tmp_path / output), str(tmp_path / "w"))
  assert sorted(os.listdir(tmp_path)) == ["src"]


@pytest.mark.parametrize("field, value, pattern", [
    ("fps", -5.0, r"config\.infer\.fps: -5\.0 is not a frame rate; give a positive number"),
    ("fps", 0.0, r"config\.infer\.fps: 0\.0 is not a frame rate"),
    ("fps", float("nan"), r"config\.infer\.fps: nan is not a frame rate"),
    ("time", "3x", r"config\.infer\.time: '3x' is not one of '2x' \(.*\), '1x' \(.*\)"),
])
def test_bad_fields_are_refused_before_anything(tmp_path, source, field, value, pattern):
  config = _config(source, tmp_path / "o.mp4", **{field: value})
  with pytest.raises(ValueError, match=pattern):
    preflight(config, str(tmp_path / "w"))
  assert sorted(os.listdir(tmp_path)) == ["src"]


def _cli(*args, script=None, env=None):
  cmd = [sys.executable] + ([script] if script else ["-m", "megan_jax.main"]) + list(args)
  return subprocess.run(cmd, cwd=infer_fakes.REPO, capture_output=True, text=True, timeout=180,
                        check=False, env={**os.environ, **(env or {})})


def _one_line(proc, code, pattern):
  assert proc.returncode == code, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert re.fullmatch(pattern, last), proc.stderr[-3000:]


def test_unreadable_input_is_named_before_the_workdir_is_touched(tmp_path):
  bad = tmp_path / "ok.mp4"
  bad.write_text("not a video")
  workdir = tmp_path / "run"
  proc = _cli("--mode=infer", "--config=configs/demo.py", f"--workdir={workdir}",
              f"--config.infer.input={bad}")  # demo.py starts an empty workdir from demo_small
  _one_line(proc, 2, re.escape(f"megan_jax: error: config.infer.input: {bad} is not a video PyAV "
                               "can read (Invalid data found when processing input); give a video "
                               "file that FFmpeg decodes or a folder of frames"))
  assert not workdir.exists()


@pytest.mark.parametrize("mode", ["infer", "eval"])
def test_ctrl_c_during_infer_or_eval_is_one_line(tmp_path, mode):
  clips = tmp_path / "clips"
  for k in range(2):  # two 7-frame clips for eval (two windows), one 5-frame folder for infer
    infer_fakes.write_frames(clips / f"c{k}", _frames(7, seed=k).repeat(2, 1).repeat(2, 2))
  args = ([f"--config.infer.input={clips / 'c0'}", f"--config.infer.output={tmp_path / 'o.mp4'}"]
          if mode == "infer" else [f"--config.eval.adobe={clips}", "--config.eval.save_crops=False"])
  proc = _cli(f"--mode={mode}", "--config=configs/vimeo.py:tiny", f"--workdir={tmp_path / 'run'}",
              *args, script=os.path.join(infer_fakes.REPO, "tests", "infer_fakes.py"))
  _one_line(proc, 130, rf"megan_jax: error: stopped by SIGINT \(Ctrl-C\) during --mode={mode}; .*")
  assert not (tmp_path / "o.mp4").exists()
  assert sorted(os.listdir(tmp_path)) == (["clips", "run"] if mode == "eval" else ["clips"])
