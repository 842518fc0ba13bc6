"""What python -m megan_jax.main prints: the config listing, the startup summary, the compile line,
and the closing lines naming everything a run wrote."""

import os
import re
import subprocess
import sys

import ml_collections

import train_fakes
from megan_jax import checkpointing, config_doc, logging_utils

# The toy model's parameters, by hand: Conv_0 3x3 from 3 to 8 channels, Conv_1 3x3 from the 4
# frames' 4 * 8 channels to the 7 frames' 7 * 3 * 16 pixel-shuffle channels, each with a bias.
TOY_PARAMS = {"Conv_0": 3 * 3 * 3 * 8 + 8, "Conv_1": 3 * 3 * 32 * 336 + 336}


def _run(*args, script=None, env=None):
  cmd = [sys.executable] + ([script] if script else ["-m", "megan_jax.main"]) + list(args)
  return _subprocess(cmd, env)


def _subprocess(cmd, env=None):
  return subprocess.run(cmd, cwd=train_fakes.REPO, capture_output=True, text=True, timeout=300,
                        check=False, env=env)


def _leaves(config, prefix=""):
  """{dotted path: value} of a ConfigDict's fields, a list counting as one field."""
  out = {}
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_leaves(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def test_config_listing_has_every_field_its_value_and_its_comment():
  sys.path.insert(0, train_fakes.REPO)
  from configs import vimeo  # pylint: disable=import-outside-toplevel
  proc = _run("--config=configs/vimeo.py", "--mode=config", "--config.data.crop=16")
  assert proc.returncode == 0, proc.stderr[-3000:]
  head, *lines = proc.stdout.splitlines()
  assert "--config.<field>=<value>" in head
  rows = {}
  for line in lines:
    path, value, description = re.split(r"\s{2,}", line, maxsplit=2)
    rows[path] = (value, description)
  want = _leaves(vimeo.get_config())
  assert sorted(rows) == sorted(want)
  assert rows["data.crop"][0] == "16" and rows["batch_size"][0] == repr(want["batch_size"])
  assert rows["eval.datasets"][0] == "[Vimeo-Fast, Vimeo-Medium, Vimeo-Slow]"
  assert all(description != "-" for _, description in rows.values())
  with open(os.path.join(train_fakes.REPO, "configs", "vimeo.py"), encoding="utf-8") as f:
    commented = re.findall(r"^\s*c\.([\w.]+) = .*?#\s*(.+)$", f.read(), re.MULTILINE)
  assert len(commented) > 40
  for path, comment in commented:  # a parent's comment describes its fields without their own
    if path in rows:
      assert rows[path][1] == comment.strip(), path
    else:
      children = [rows[p][1] for p in rows if p.startswith(path + ".")]
      assert children, path
      assert all(d == f"part of {path}: {comment.strip()}" for d in children
                 if d.startswith("part of ")), path
  for field in ("kind", "root", "name", "list_file", "lr_root", "max_clips"):  # each its own
    assert rows[f"val.{field}"][1] == vimeo.EVAL_SPEC_FIELDS[field], field


def test_help_names_the_listing_and_workdir_is_required_to_run():
  assert "--mode=config" in _run("--helpfull").stdout
  proc = _run("--config=configs/vimeo.py")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "--workdir is required for --mode=train" in proc.stderr


def test_xla_cpp_log_is_quiet_unless_asked():
  code = "import os, megan_jax.main; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  cmd = [sys.executable, "-c", code]
  assert _subprocess(cmd, env).stdout.split() == ["3"]
  assert _subprocess(cmd, {**env, "TF_CPP_MIN_LOG_LEVEL": "0"}).stdout.split() == ["0"]


def test_train_prints_summary_compile_time_and_what_it_wrote(tmp_path):
  data_root = train_fakes.make_vimeo_tree(str(tmp_path / "vimeo"), num_clips=4)
  workdir = str(tmp_path / "run")
  proc = _run("--config=configs/vimeo.py:tiny", f"--workdir={workdir}",
              *train_fakes.overrides(data_root, num_steps=4, log_every=2),
              script=train_fakes.__file__)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  total = sum(TOY_PARAMS.values())
  assert lines[0] == f"workdir {workdir}"
  assert lines[1].startswith(f"model megan: {total:,} parameters (Conv_0 {TOY_PARAMS['Conv_0']:,}, "
                             f"Conv_1 {TOY_PARAMS['Conv_1']:,}); full table in ")
  assert lines[2] == "1 device (cpu), 1 process; global batch 4 of 4x8x8 LR clips (4 per device)"
  assert lines[3] == "compiling the train step (first time takes minutes on a CPU)"
  assert re.fullmatch(r"compiled the train step and ran it once in \d+m\d\ds"
                      r"(; (saved in|loaded from) the compilation cache .+)?", lines[4])
  assert lines[5].startswith("step 2/4 | loss ") and " ETA " in lines[5]
  with open(os.path.join(workdir, logging_utils.PARAMETERS_NAME), encoding="utf-8") as f:
    assert "Conv_1/kernel" in f.read()
  named = re.findall(r"^wrote (\S+) ", proc.stdout, re.MULTILINE)
  assert sorted(named) == sorted(os.path.join(workdir, name) for name in os.listdir(workdir))
  steps = sorted(int(s) for s in os.listdir(checkpointing.checkpoint_dir(workdir)))
  assert f"(checkpoints of steps {', '.join(map(str, steps))})" in proc.stdout


def _comment_lines(*paths) -> set:
  """The comments on lines of their own (section headings, notes) of the files."""
  found = set()
  for path in paths:
    with open(os.path.join(train_fakes.REPO, *path.split("/")), encoding="utf-8") as f:
      found.update(m.strip() for m in re.findall(r"^\s*#(.+)$", f.read(), re.MULTILINE))
  return found


def test_every_field_has_its_own_description_and_none_is_a_heading():
  sys.path.insert(0, train_fakes.REPO)
  from configs import demo, vimeo  # pylint: disable=import-outside-toplevel
  headings = _comment_lines("configs/vimeo.py", "configs/demo.py", "megan_jax/models/configs.py")
  assert "LMGA (Sec. 3.3, Eq. (12)-(13))." in headings  # the headings the listing once showed
  for config, name, whole in ((vimeo.get_config(), "configs/vimeo.py", set()),
                              (demo.get_config(), "configs/demo.py", {"data.frames"})):
    _, *lines = config_doc.listing(config, name).splitlines()
    assert f"val.root  {config.val.root!r}" in "\n".join(  # a path is shown whole
        re.sub(r"\s{2,}", "  ", l) for l in lines)
    rows = dict((p, d) for p, _, d in (re.split(r"\s{2,}", l, maxsplit=2) for l in lines))
    by_text = {}
    for path, text in rows.items():
      assert not any(h in text for h in headings), (path, text)
      parent = re.match(r"part of ([\w.]+): ", text)
      # Only the keys of a ConfigDict set as a whole (an eval spec, a {clip: factor} dict) share
      # their parent's description; every field set by its own line has its own.
      assert (parent.group(1) if parent else path.rsplit(".", 1)[0]) in whole or not parent, path
      by_text.setdefault(text, []).append(path)
    for text, paths in by_text.items():
      if not text.startswith("part of "):  # the same setting in two sections, e.g. eval/infer.tile
        assert len({p.rsplit(".", 1)[-1] for p in paths}) == 1, (text, paths)
    for path in ("model.scan_unroll", "model.use_lmga", "model.nlrb_blocks", "model.use_nlrb",
                 "model.name", "model.front_convs"):
      assert by_text[rows[path]] == [path], path
