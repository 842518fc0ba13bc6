r"""Train, evaluate or upscale: python -m megan_jax.main --config=configs/vimeo.py --workdir=DIR
[--mode=train|eval|infer|export] [--config.field=value ...]. Training resumes from DIR's checkpoint;
an empty DIR starts from config.pretrained when set. --mode=export writes DIR's parameters to a
.npz (config.export.output). --mode=config lists every config field with its value and a
description (no --workdir needed)."""

import importlib.util
import os
import re
import sys

# XLA's C++ log shows only FATAL messages: on a CPU its "Very slow compile?" alarm (an ERROR after
# two minutes of compiling) is expected and reads as a failure. TF_CPP_MIN_LOG_LEVEL=0 shows it all.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging
from ml_collections import config_flags

from megan_jax import config_doc

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


def _die(message: str, code: int = 2):
  sys.stderr.write(f"megan_jax: error: {message}\n")
  sys.exit(code)


def _unknown_fields_message(argv) -> str:
  """Names the --config.<field> overrides that the config file does not define."""
  specs = [m.group(1) for a in argv if (m := re.match(r"--config=(.+)", a))]
  specs += [b for a, b in zip(argv, argv[1:]) if a == "--config"]
  if not specs:
    return "unknown config field in the overrides (and no --config file given)"
  spec = specs[-1]
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_megan_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  unknown = []
  for field in [m.group(1) for a in argv if (m := re.match(r"--config\.([\w.]+)", a))]:
    node = config
    for name in field.split("."):
      if not hasattr(node, "keys") or name not in node.keys():
        unknown.append(f"config.{field}")
        break
      node = node[name]
  return (f"unknown config field {', '.join(unknown)}: not defined by {spec}; its top-level "
          f"fields are {sorted(config.keys())}")


def _parse(argv):
  """absl flag parsing with one-line errors for unknown config fields and unloadable configs."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.keys()  # raises here if the config file failed to load
    if FLAGS["verbosity"].using_default_value:  # absl would log at INFO; orbax logs every save
      FLAGS.verbosity = logging.WARNING
    return rest
  except flags.Error as e:
    message = str(e)
    if "Traceback (most recent call last)" in message:  # get_config raised: keep its last line
      message = message.split("\n", 1)[0] + " " + message.strip().splitlines()[-1]
    _die(f"{message}\nPass --helpfull to see the flags.")
  except (AttributeError, KeyError):
    _die(_unknown_fields_message(argv))
  except OSError as e:
    _die(str(e))


def main(argv):
  if len(argv) > 1:
    _die(f"unexpected arguments {argv[1:]}")
  config = FLAGS.config
  if FLAGS.mode == "config":
    print(config_doc.listing(config, FLAGS["config"].config_filename))
    return
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
    if FLAGS.mode != "train":  # training starts from it itself, checked against its model
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
