"""The `--config=FILE[:ARG]` of the command line: why it failed to load or parse, in one line.

ml_collections loads the file while absl parses the flags; when that fails (a syntax error, an
exception in `get_config`, an override naming a field the file does not define) the error reaches
main.py as a traceback of absl and ml_collections frames. `parse_error` loads the file again on
its own to name the file, the line and the error, or the unknown fields. `split_none_overrides`
lets `--config.<field>=None` mean None, as the config files' comments write it. `help_exits_zero`
makes `--help` a success.
"""

import contextlib
import importlib.util
import os
import re
import sys
import traceback

NO_CONFIG = ("--config is required: the config file of the run, e.g. --config=configs/vimeo.py "
             "(configs/demo.py for the CPU demo)")


HELP_FLAGS = frozenset(f"{dash}{name}" for dash in ("-", "--")
                       for name in ("help", "h", "?", "helpshort", "helpfull", "helpxml"))


@contextlib.contextmanager
def help_exits_zero(argv):
  """absl prints the text asked for by --help (--helpfull, ...) and exits with status 1; asking
  for help is not an error: the exit status becomes 0."""
  try:
    yield
  except SystemExit as e:
    if e.code == 1 and HELP_FLAGS & set(argv[1:]):
      sys.exit(0)
    raise


class ConfigFileError(ValueError):
  """The config file does not load; the message is one line naming it and the failing line."""


def spec_of(argv) -> str | None:
  """The last --config=PATH[:ARG] of argv (None when there is none)."""
  specs = [m.group(1) for a in argv if (m := re.match(r"--config=(.+)", a))]
  specs += [b for a, b in zip(argv, argv[1:]) if a == "--config"]
  return specs[-1] if specs else None


def _describe(spec: str, e: BaseException) -> str:
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


def load(spec: str):
  """`get_config(ARG)` of the file of `spec` "PATH[:ARG]"; ConfigFileError if it fails."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigFileError(
        f"--config={spec}: {path} {'is a directory' if os.path.isdir(path) else 'does not exist'}"
        f"; give a config file such as configs/vimeo.py")
  try:
    module_spec = importlib.util.spec_from_file_location("_megan_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
      raise ConfigFileError(f"--config={spec}: {path} defines no get_config(); a config file "
                            f"returns its ml_collections.ConfigDict from get_config()")
    return get_config(arg) if arg else get_config()
  except ConfigFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # any error of the user's file
    raise ConfigFileError(_describe(spec, e)) from e


def parse_error(argv, error: Exception) -> str:
  """Why parsing `argv` raised `error`, in one line: no --config, the file does not load, or the
  --config.<field> overrides it does not define (else `error` itself)."""
  spec = spec_of(argv)
  if spec is None:
    return NO_CONFIG
  try:
    config = load(spec)
  except ConfigFileError as e:
    return str(e)
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


def split_none_overrides(argv) -> tuple[list, list]:
  """(argv without its --config.<field>=None arguments, the fields whose last override is None).

  ml_collections would set a string field to the text 'None' and refuse it for a number; the
  docs' `--config.pretrained=None` means None, as in the config files."""
  last = {}
  for a in argv:
    if m := re.match(r"--config\.([\w.]+)=(.*)", a, re.DOTALL):
      last[m.group(1)] = m.group(2)
  rest = [a for a in argv if not re.fullmatch(r"--config\.[\w.]+=None", a)]
  return rest, [field for field, value in last.items() if value == "None"]
