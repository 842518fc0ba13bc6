"""Where a run writes (the workdir, checkpoints, eval results, upscaled videos), checked before it does.

A run that can only fail when it writes its first result (after minutes of compiling, training or
upscaling) is checked up front instead: each function here raises an OSError whose message is one
line naming the setting (`--workdir`, `config.infer.output`), the path and what to do.
`describe_os_error` turns any other OSError into such a line. `staged` writes a result under a
temporary name and moves it into place when it is complete, so that a run that stops (an error, a
signal) never leaves a half-written file under the name a user asked for.
"""

import contextlib
import errno
import os
import shutil
import tempfile

_ADVICE = {
    errno.EACCES: "make it writable or choose another path",
    errno.EPERM: "make it writable or choose another path",
    errno.EROFS: "it is on a read-only file system: choose another path",
    errno.ENOSPC: "free some space or choose another disk",
    errno.EDQUOT: "free some space (disk quota exceeded) or choose another disk",
    errno.ENOTDIR: "a part of the path is a file: choose another path",
    errno.EEXIST: "a file is in the way: choose another path",
}


def default_cache_dir() -> str:
  """Where JAX's persistent compilation cache goes by default (config.compilation_cache_dir):
  `$XDG_CACHE_HOME/megan_jax` when XDG_CACHE_HOME is an absolute path (the XDG Base Directory
  rule: an empty or relative value is ignored), else `~/.cache/megan_jax`."""
  base = os.environ.get("XDG_CACHE_HOME", "")
  if not os.path.isabs(base):
    base = os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "megan_jax")


def describe_os_error(e: OSError, what: str | None = None, path: str | None = None) -> str:
  """One line: the setting, the path (`path`, else the error's), the system's reason, what to do."""
  if e.errno is None:  # raised by this module: already such a line
    return str(e)
  path = path or e.filename or "?"
  where = f"{what}: {path}" if what else str(path)
  return f"{where}: {e.strerror or e}; {_ADVICE.get(e.errno, 'check the path')}"


def writable_dir(path: str, what: str) -> str:
  """Creates directory `path` if missing and checks that files can be created in it.

  Raises NotADirectoryError when `path` (or a parent) is a file, PermissionError (or another
  OSError) when the directory cannot be created or written, each with a message naming `what`.
  Returns the absolute path.
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f"{what}: {path} is a file, not a directory; give a directory path "
                             f"(it is created if missing)")
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write_test_", dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise type(e)(describe_os_error(e, what, path)) from e
  return path


def writable_file(path: str, what: str) -> str:
  """Checks that file `path` can be written (its folder is created if missing); returns it absolute."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    raise IsADirectoryError(f"{what}: {path} is a directory; give a file path")
  writable_dir(os.path.dirname(path), what)
  return path


def same_path(a: str, b: str) -> bool:
  """True when `a` and `b` name the same file or folder (spelling, links and symlinks resolved)."""
  if os.path.exists(a) and os.path.exists(b):
    return os.path.samefile(a, b)
  return os.path.realpath(a) == os.path.realpath(b)


def partial_name(path: str) -> str:
  """The temporary name `staged` writes `path` under: `.NAME.partial-PID.EXT` beside it (the
  extension kept, since writers such as FFmpeg choose the format by it)."""
  folder, name = os.path.split(os.path.abspath(path))
  ext = os.path.splitext(name)[1]
  return os.path.join(folder, f".{name}.partial-{os.getpid()}{ext}")


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    os.remove(path)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def stale_temporaries(temp: str) -> list[str]:
  """The temporaries that runs killed without a chance to clean up (kill -9, a power cut) left
  beside `temp`: the same name with another PID after "partial-", whose process no longer runs.
  A temporary of a process still running is not one."""
  folder, name = os.path.split(temp)
  prefix, mark, suffix = name.partition(f"partial-{os.getpid()}")
  if not mark or not os.path.isdir(folder):
    return []
  found = []
  for entry in sorted(os.listdir(folder)):
    pid = entry[len(prefix) + len("partial-"):len(entry) - len(suffix)]
    if (entry != name and entry.startswith(prefix + "partial-") and entry.endswith(suffix)
        and pid.isdigit() and not _alive(int(pid))):
      found.append(os.path.join(folder, entry))
  return found


@contextlib.contextmanager
def staged(path: str, temp: str | None = None, finish=os.replace, note=None):
  """Yields a temporary name (`temp`, default `partial_name(path)`) to write `path` under.

  When the block completes, `finish(temp, path)` moves the result into place (default: a rename,
  atomic on one file system); when the block or `finish` raises (KeyboardInterrupt and the
  exceptions of signal handlers included), whatever was written under `temp` is removed. The
  temporaries of killed earlier runs beside it are removed first (`stale_temporaries`), each reported
  to `note` (a function of one line) when given.
  """
  temp = temp or partial_name(path)
  for stale in stale_temporaries(temp):
    _remove(stale)
    if note:
      note(f"removed {stale}, left by an earlier run that was killed while writing {path}")
  try:
    yield temp
    finish(temp, path)
  except BaseException:
    _remove(temp)
    raise
