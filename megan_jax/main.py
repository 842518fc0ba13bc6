r"""Train, evaluate or upscale: python -m megan_jax.main --config=configs/vimeo.py --workdir=DIR
[--mode=train|eval|infer|export] [--config.field=value ...]. Training resumes from DIR's checkpoint;
an empty DIR starts from config.pretrained when set. --mode=export writes DIR's parameters to a
.npz (config.export.output). --mode=config lists every config field with its value and a
description (no --workdir needed)."""

import importlib.util
import os
import re
import sys
import traceback

# XLA's C++ log shows only FATAL messages: on a CPU its "Very slow compile?" alarm (an ERROR after
# two minutes of compiling) is expected and reads as a failure. TF_CPP_MIN_LOG_LEVEL=0 shows it all.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from megan_jax import config_check, config_doc

flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results (required "
                    "except with --mode=config).")
flags.DEFINE_enum("mode", "train", ["train", "eval", "infer", "export", "config"],
                  "What to run; `export` writes the workdir's parameters to a .npz "
                  "(config.export.output) that config.pretrained can name; `config` lists the "
                  "config fields (--config.<field>=value), their values and descriptions, and exits.")
config_flags.DEFINE_config_file(
    "config", None, "Config file (path[:arg]); its fields are set with --config.<field>=value and "
    "listed, with descriptions, by --mode=config.", lock_config=True)
FLAGS = flags.FLAGS
_NO_CONFIG = ("--config is required: the config file of the run, e.g. --config=configs/vimeo.py "
              "(configs/demo.py for the CPU demo)")


def _die(message: str, code: int = 2):
  sys.stderr.write(f"megan_jax: error: {message}\n")
  sys.exit(code)


def _config_spec(argv) -> str | None:
  """The last --config=PATH[:ARG] of argv (None when there is none)."""
  specs = [m.group(1) for a in argv if (m := re.match(r"--config=(.+)", a))]
  specs += [b for a, b in zip(argv, argv[1:]) if a == "--config"]
  return specs[-1] if specs else None


def _load_error(spec: str, e: BaseException) -> str:
  """One line: the config file, the line that failed (the innermost frame in that file, or where
  a syntax error is) and the error."""
  path = os.path.abspath(spec.partition(":")[0])
  where = spec
  if isinstance(e, SyntaxError) and e.filename:
    where = f"{e.filename}, line {e.lineno}"
  elif frames := [f for f in traceback.extract_tb(e.__traceback__) if f.filename == path]:
    where = f"{spec}, line {frames[-1].lineno}"
  text = " ".join((e.msg if isinstance(e, SyntaxError) else str(e)).split())
  advice = "" if isinstance(e, ValueError) else "; fix the config file"  # a ValueError advises
  return f"--config={where}: {type(e).__name__}: {text}{advice}"


def _load_config(spec: str):
  """The config of `spec` as ml_collections loads it; a SystemExit with one line if it fails."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    _die(f"--config={spec}: {path} {'is a directory' if os.path.isdir(path) else 'does not exist'}"
         f"; give a config file such as configs/vimeo.py")
  try:
    module_spec = importlib.util.spec_from_file_location("_megan_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      _die(f"--config={spec}: {path} defines no get_config(); a config file returns its "
           f"ml_collections.ConfigDict from get_config()")
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  # any error of the user's file
    _die(_load_error(spec, e))


def _unknown_fields_message(argv, error: Exception) -> str:
  """Names the --config.<field> overrides that the config file does not define (or why the
  config file does not load); else the `error` that parsing raised."""
  spec = _config_spec(argv)
  if spec is None:
    return _NO_CONFIG
  config = _load_config(spec)
  unknown = []
  for field in [m.group(1) for a in argv if (m := re.match(r"--config\.([\w.]+)", a))]:
    node = config
    for name in field.split("."):
      if not hasattr(node, "keys") or name not in node.keys():
        unknown.append(f"config.{field}")
        break
      node = node[name]
  if not unknown:
    return f"{type(error).__name__}: {error}"
  return (f"unknown config field {', '.join(unknown)}: not defined by {spec}; its top-level "
          f"fields are {sorted(config.keys())}")


def _split_none_overrides(argv) -> tuple[list, list]:
  """(argv without its --config.<field>=None arguments, the fields whose last override is None).

  ml_collections would set a string field to the text 'None' and refuse it for a number; the
  docs' `--config.pretrained=None` means None, as in the config files."""
  last = {}
  for a in argv:
    if m := re.match(r"--config\.([\w.]+)=(.*)", a, re.DOTALL):
      last[m.group(1)] = m.group(2)
  rest = [a for a in argv if not re.fullmatch(r"--config\.[\w.]+=None", a)]
  return rest, [field for field, value in last.items() if value == "None"]


def _parse(argv):
  """absl flag parsing with one-line errors for unknown config fields and unloadable configs."""
  try:
    rest, to_none = _split_none_overrides(argv)
    rest = FLAGS(rest)
    if FLAGS.config is None:
      _die(_NO_CONFIG)
    for field in to_none:
      config_path.set_value(field, FLAGS.config, None)
    FLAGS.config.keys()  # raises here if the config file failed to load
    if FLAGS["verbosity"].using_default_value:  # absl would log at INFO; orbax logs every save
      FLAGS.verbosity = logging.WARNING
    return rest
  except flags.Error as e:
    message = str(e)
    if "Error whilst parsing config file" in message:  # get_config raised ValueError/TypeError
      message = _unknown_fields_message(argv, e)
    _die(f"{' '.join(message.split())}; --helpfull lists the flags")
  except Exception as e:  # pylint: disable=broad-except  # an unknown field, or a failed load
    _die(_unknown_fields_message(argv, e))


def main(argv):
  if len(argv) > 1:
    _die(f"unexpected arguments {argv[1:]}")
  config = FLAGS.config
  if FLAGS.mode == "config":
    print(config_doc.listing(config, FLAGS["config"].config_filename))
    return
  try:
    config_check.check(config)
  except ValueError as e:
    _die(str(e))
  if not FLAGS.workdir:
    _die(f"--workdir is required for --mode={FLAGS.mode}: the run directory (checkpoints, logs, "
         f"results)")
  # pylint: disable-next=import-outside-toplevel
  from megan_jax import checkpointing, evaluate, infer, paths, pretrained, train
  train.setup_runtime(config)
  try:
    if FLAGS.mode == "export":
      pretrained.export(config, FLAGS.workdir, FLAGS["config"].config_filename)
      return
    pretrained.start_workdir(config, FLAGS.workdir)
    if FLAGS.mode == "train":
      train.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
      evaluate.evaluate(config, FLAGS.workdir)
    else:
      infer.infer(config, FLAGS.workdir)
  except train.Interrupted as e:
    _die(str(e), e.exit_code)
  except (ValueError, FloatingPointError, checkpointing.CheckpointError) as e:  # config, data, numbers
    logging.info("traceback (shown with --verbosity=0):", exc_info=True)
    _die(str(e))
  except OSError as e:  # a path that cannot be read or written
    logging.info("traceback (shown with --verbosity=0):", exc_info=True)
    _die(paths.describe_os_error(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
