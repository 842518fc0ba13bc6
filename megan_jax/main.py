r"""Train, evaluate or upscale: python -m megan_jax.main --config=configs/vimeo.py --workdir=DIR
[--mode=train|eval|infer] [--config.field=value ...]. Training resumes from DIR's checkpoint."""

import importlib.util
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.", required=True)
flags.DEFINE_enum("mode", "train", ["train", "eval", "infer"], "What to run.")
config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
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
  # pylint: disable-next=import-outside-toplevel
  from megan_jax import checkpointing, evaluate, infer, paths, train
  config = FLAGS.config
  train.setup_runtime(config)
  try:
    if FLAGS.mode == "train":
      train.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
      evaluate.evaluate(config, FLAGS.workdir)
    else:
      print(infer.infer(config, FLAGS.workdir))
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
