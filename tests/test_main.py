"""python -m megan_jax.main: one-line errors for bad input, SIGTERM saves and resumes."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import train_fakes
from megan_jax import checkpointing, config_file, logging_utils, pretrained


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


def test_no_config_says_it_is_required(tmp_path):
  proc = _main(f"--workdir={tmp_path}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "megan_jax: error: --config is required: the config file of the run, e.g. "
      "--config=configs/vimeo.py (configs/demo.py for the CPU demo)"]


@pytest.mark.parametrize("source, line", [
    ("import os\ndef get_config(:\n  pass\n",
     r"{path}, line 2: SyntaxError: invalid syntax; fix the config file"),
    ("def get_config():\n  x = 1\n  raise RuntimeError('no GPU here')\n",
     r"{path}, line 3: RuntimeError: no GPU here; fix the config file"),
    ("import no_such_module_xyz\n", r"{path}, line 1: ModuleNotFoundError: No module named "
                                    r"'no_such_module_xyz'; fix the config file"),
    ("X = 1\n", r"{path}: {path} defines no get_config\(\); .*"),
    (None, r"{path}: {path} does not exist; give a config file such as configs/vimeo.py"),
])
def test_a_config_file_that_fails_to_load_is_one_line(tmp_path, source, line):
  path = tmp_path / "my_config.py"
  if source is not None:
    path.write_text(source)
  with pytest.raises(config_file.ConfigFileError) as info:
    config_file.load(str(path))
  assert re.fullmatch("--config=" + line.format(path=re.escape(str(path))), str(info.value)), (
      str(info.value))


def test_a_config_file_raising_at_load_ends_the_cli_in_one_line(tmp_path):
  path = tmp_path / "my_config.py"
  path.write_text("def get_config():\n  raise RuntimeError('no GPU here')\n")
  proc = _main(f"--config={path}", f"--workdir={tmp_path / 'run'}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"megan_jax: error: --config={path}, line 2: RuntimeError: no GPU here; fix the config file"]
  assert not os.path.exists(tmp_path / "run")


def _listed(proc) -> dict:
  assert proc.returncode == 0, proc.stderr
  return dict(re.split(r"\s{2,}", line)[:2] for line in proc.stdout.splitlines()[1:])


def test_none_on_the_command_line_is_none():
  """The docs' --config.pretrained=None (configs/demo.py), and "None: ..." of any optional field."""
  rows = _listed(_main("--config=configs/demo.py", "--mode=config", "--config.pretrained=None",
                       "--config.eval.step=None", "--config.infer.fps=None",
                       "--config.eval.tile=3", "--config.eval.tile=None",
                       "--config.infer.step=None", "--config.infer.step=5"))
  assert [rows[f] for f in ("pretrained", "eval.step", "infer.fps", "eval.tile", "infer.step")] == [
      "None", "None", "None", "None", "5"]  # the last override of a field wins


def test_documented_commands_name_real_modules_configs_and_fields():
  """Every `python -m megan_jax.X`, --config=FILE and --config.FIELD in the README and the config
  docstrings exists."""
  docs = [os.path.join(train_fakes.REPO, "README.md")] + [
      os.path.join(train_fakes.REPO, folder, f) for folder, ext in (("configs", ".py"),
                                                                    ("docs", ".md"))
      for f in os.listdir(os.path.join(train_fakes.REPO, folder)) if f.endswith(ext)]
  modules, configs, fields = set(), set(), set()
  for doc in docs:
    with open(doc, encoding="utf-8") as f:
      text = f.read()
    modules.update(re.findall(r"python -m (megan_jax[\w.]*)", text))
    configs.update(re.findall(r"--config=([\w/.]+\.py)", text))
    fields.update(f.rstrip(".") for f in re.findall(r"--config\.([\w.]+)", text) if f != "field")
  assert "megan_jax.convert" in modules and "configs/demo.py" in configs
  assert "pretrained" in fields and "eval.vid4" in fields
  sys.path.insert(0, train_fakes.REPO)
  from configs import demo  # pylint: disable=import-outside-toplevel
  known = demo.get_config()  # configs/vimeo.py's fields and the demo's own
  for field in fields:
    node = known
    for name in field.split("."):
      assert name in node, f"--config.{field}"
      node = node[name]
  for module in modules:
    assert os.path.isfile(os.path.join(train_fakes.REPO, *module.split(".")) + ".py"), module
  for config in configs:
    assert os.path.isfile(os.path.join(train_fakes.REPO, config)), config


def test_help_exits_zero_and_lists_every_mode():
  # the modes of the README and docs/USAGE.md, written out (importing main here would define its
  # absl flags a second time when another test imported megan_jax.convert, which defines --workdir)
  modes = ["train", "eval", "infer", "export", "config", "compare"]
  proc = _main("--help")
  assert proc.returncode == 0, proc.stderr
  usage = re.search(r"--mode=([\w|]+)", proc.stdout).group(1)
  assert usage.split("|") == modes
  for mode in modes:  # each with a line of its own
    assert re.search(rf"^  {mode} ", proc.stdout, re.MULTILINE), mode
  proc = subprocess.run([sys.executable, "-m", "megan_jax.convert", "--help"], cwd=train_fakes.REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0 and "--from" in proc.stdout, proc.stderr


def test_export_to_a_folder_is_refused_before_reading(tmp_path):
  folder = tmp_path / "exports"
  folder.mkdir()
  proc = _main("--mode=export", "--config=configs/vimeo.py:tiny", f"--workdir={tmp_path / 'run'}",
               f"--config.export.output={folder}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"megan_jax: error: config.export.output: {folder} is a directory; give a file path"]
  assert os.listdir(folder) == []


def test_export_never_replaces_a_file_unless_asked(tmp_path):
  """An existing export output is refused before the workdir is read; overwrite=True replaces it."""
  target = tmp_path / "mine.npz"
  target.write_bytes(b"a user's file")
  workdir = tmp_path / "run"
  proc = _main("--mode=export", "--config=configs/vimeo.py:tiny", f"--workdir={workdir}",
               f"--config.export.output={target}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"megan_jax: error: config.export.output: {target} exists; choose another path or set "
      f"--config.export.overwrite=True to replace it"]
  assert target.read_bytes() == b"a user's file" and not workdir.exists()
  proc = _main("--mode=export", "--config=configs/vimeo.py:tiny", f"--workdir={workdir}",
               f"--config.export.output={target}", "--config.export.overwrite=True")
  assert proc.returncode != 0 and "exists" not in proc.stderr  # on to the (empty) workdir
  assert target.read_bytes() == b"a user's file"  # nothing to export: the file is kept


def test_a_failed_export_write_leaves_no_temporary_file(tmp_path):
  target = tmp_path / "taken.npz"
  target.mkdir()  # os.replace cannot put a file over a folder
  with pytest.raises(OSError):
    pretrained.save(str(target), {"a": {"kernel": np.zeros(3)}}, {})
  assert sorted(os.listdir(tmp_path)) == ["taken.npz"] and os.listdir(target) == []


def test_ctrl_c_outside_the_runs_own_handlers_is_one_line(tmp_path):
  """A KeyboardInterrupt from where no run handles signals (here: the config check) ends in one
  line and exit 130 (128 + SIGINT), not a traceback; nothing is created."""
  script = tmp_path / "interrupted_main.py"
  script.write_text(
      "from absl import app\n"
      "from megan_jax import config_check, main\n"
      "def interrupt(config):\n"
      "  raise KeyboardInterrupt\n"
      "config_check.check = interrupt\n"
      "app.run(main.main, flags_parser=main._parse)\n")
  proc = _main("--config=configs/vimeo.py", f"--workdir={tmp_path}/run", script=str(script))
  assert proc.returncode == 130, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "megan_jax: error: stopped by SIGINT (Ctrl-C); what was already saved is kept: rerun the "
      "same command to continue"]
  assert not (tmp_path / "run").exists()


def test_readme_is_a_first_read_and_its_test_command_is_what_ci_runs():
  """At most 150 lines; the tests' command in the README is the one .ci/run runs."""
  with open(os.path.join(train_fakes.REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  assert len(readme.splitlines()) <= 150
  with open(os.path.join(train_fakes.REPO, ".ci", "run"), encoding="utf-8") as f:
    ci = [l for l in f.read().splitlines() if "pytest" in l][0]
  command = ci[ci.index("python3 -m venv"):]
  assert f"```bash\n{command}\n```" in readme
  assert "python -m megan_jax.main --config=configs/demo.py --workdir=/tmp/megan_demo" in readme
