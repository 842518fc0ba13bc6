"""Where a run writes (the workdir, checkpoints, eval results, upscaled videos), checked before it does.

A run that can only fail when it writes its first result (after minutes of compiling, training or
upscaling) is checked up front instead: each function here raises an OSError whose message is one
line naming the setting (`--workdir`, `config.infer.output`), the path and what to do.
`describe_os_error` turns any other OSError into such a line.
"""

import errno
import os
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
