r"""Train, evaluate or upscale: python -m megan_jax.main --config=configs/vimeo.py --workdir=DIR
[--mode=train|eval|infer|export|config|compare] [--config.field=value ...].

  train    (default) trains; resumes from DIR's checkpoint; an empty DIR starts from
           config.pretrained when set (configs/demo.py: the packaged demo_small)
  eval     scores DIR's latest checkpoint (or config.eval.step) and the baseline: a table, JSON,
           per-frame plots and crops under DIR/eval/
  infer    upscales config.infer.input (a video or a folder of frames) to config.infer.output:
           4x the resolution, 2x the frame rate (config.infer.time=1x: the source's frame rate)
  export   writes DIR's parameters to a .npz (config.export.output) that config.pretrained reads
  config   lists every config field with its value and a description (no --workdir needed)
  compare  compares DIR with the run folder config.compare.other (exit 0: identical, 1: not;
           docs/GUARANTEES.md)

Examples: README.md; every mode and field: docs/USAGE.md."""

import os
import signal
import sys


class _Stopped(Exception):  # pylint: disable=g-bad-exception-name
  """A stop signal outside the runs' own handlers (`_stop`); `signum` is its number."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


_STARTED = []  # non-empty once main() runs: before it (importing) nothing can be unwound


def _stop(signum, frame):
  """SIGINT, SIGTERM and SIGHUP where no run's own handler is installed (importing, checking the
  config, export, compare, between a training and its final eval): one line and 128 + n, never
  Python's KeyboardInterrupt traceback or a silent SIGTERM death. A run's handlers
  (`stop_signals`) replace this one in its blocks and restore it after."""
  del frame
  if not _STARTED:  # importing: nothing was written
    name = signal.Signals(signum).name
    os.write(2, f"megan_jax: error: stopped by {name} while starting; nothing was written: rerun "
                f"the same command\n".encode())
    os._exit(128 + signum)  # pylint: disable=protected-access
  raise _Stopped(signum)


def _install() -> dict:
  """Installs `_stop`; returns the handlers it replaced. SIGHUP under nohup stays ignored."""
  return {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
          if signal.getsignal(s) not in (signal.SIG_IGN, _stop)}


if __name__ == "__main__":  # python -m megan_jax.main: from the first line, imports included
  _install()

# XLA's C++ log shows only FATAL messages: on a CPU its "Very slow compile?" alarm (an ERROR after
# two minutes of compiling) is expected and reads as a failure. TF_CPP_MIN_LOG_LEVEL=0 shows it all.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from megan_jax import config_check, config_doc, config_file

flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results (required "
                    "except with --mode=config).")
flags.DEFINE_enum("mode", "train", ["train", "eval", "infer", "export", "config", "compare"],
                  "What to run; `compare` compares --workdir with the run folder "
                  "config.compare.other (exit 0: identical, 1: not); "
                  "`export` writes the workdir's parameters to a .npz "
                  "(config.export.output) that config.pretrained can name; `config` lists the "
                  "config fields (--config.<field>=value), their values and descriptions, and exits.")
config_flags.DEFINE_config_file(
    "config", None, "Config file (path[:arg]); its fields are set with --config.<field>=value and "
    "listed, with descriptions, by --mode=config.", lock_config=True)
FLAGS = flags.FLAGS


def _die(message: str, code: int = 2):
  sys.stderr.write(f"megan_jax: error: {message}\n")
  sys.exit(code)


def _parse(argv):
  """absl flag parsing with one-line errors for unknown config fields and unloadable configs."""
  try:
    rest, to_none = config_file.split_none_overrides(argv)
    with config_file.help_exits_zero(argv):
      rest = FLAGS(rest)
    if FLAGS.config is None:
      _die(config_file.NO_CONFIG)
    for field in to_none:
      config_path.set_value(field, FLAGS.config, None)
    FLAGS.config.keys()  # raises here if the config file failed to load
    if FLAGS["verbosity"].using_default_value:  # absl would log at INFO; orbax logs every save
      FLAGS.verbosity = logging.WARNING
    return rest
  except flags.Error as e:
    if "Error whilst parsing config file" in str(e):  # get_config raised ValueError/TypeError
      _die(config_file.parse_error(argv, e))
    _die(f"{' '.join(str(e).split())}; --helpfull lists the flags")
  except Exception as e:  # pylint: disable=broad-except  # an unknown field, or a failed load
    _die(config_file.parse_error(argv, e))


def main(argv):
  replaced = _install()  # when imported by another program (the tests' scripts)
  _STARTED.append(True)
  try:
    _main(argv)
  except (KeyboardInterrupt, _Stopped) as e:  # outside the runs' own handlers
    signum = e.signum if isinstance(e, _Stopped) else signal.SIGINT
    name = signal.Signals(signum).name + (" (Ctrl-C)" if signum == signal.SIGINT else "")
    _die(f"stopped by {name}; what was already saved is kept: rerun the same command to "
         f"continue", 128 + signum)
  finally:
    _STARTED.clear()
    for s, handler in replaced.items():
      signal.signal(s, handler)


def _main(argv):
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
  from megan_jax import (checkpointing, evaluate, infer, multiprocess, paths, pretrained,
                         stop_signals, train)
  train.setup_runtime(config)

  def eval_or_infer():  # in a multi-process job, process 0 does it alone (multiprocess.py)
    plan = infer.preflight(config, FLAGS.workdir) if FLAGS.mode == "infer" else None  # inputs first
    pretrained.start_workdir(config, FLAGS.workdir)  # training starts from it itself
    if FLAGS.mode == "eval":
      with stop_signals.stop_on_signals("--mode=eval"):
        evaluate.evaluate(config, FLAGS.workdir)
    else:
      infer.infer(config, FLAGS.workdir, plan)

  try:
    if FLAGS.mode == "export":
      multiprocess.on_process_0("--mode=export", pretrained.export, config, FLAGS.workdir,
                                FLAGS["config"].config_filename)
      return
    if FLAGS.mode == "compare":
      from megan_jax import repro  # pylint: disable=import-outside-toplevel
      sys.exit(repro.compare_main(config, FLAGS.workdir))
    if FLAGS.mode == "train":
      train.train_and_evaluate(config, FLAGS.workdir)
    else:
      multiprocess.on_process_0(f"--mode={FLAGS.mode}", eval_or_infer)
  except stop_signals.Interrupted as e:
    _die(str(e), e.exit_code)
  except (ValueError, FloatingPointError, checkpointing.CheckpointError) as e:  # config, data, numbers
    logging.info("traceback (shown with --verbosity=0):", exc_info=True)
    _die(str(e))
  except OSError as e:  # a path that cannot be read or written
    logging.info("traceback (shown with --verbosity=0):", exc_info=True)
    _die(paths.describe_os_error(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
