"""One training run per workdir: an exclusive `fcntl.flock` on WORKDIR/.lock, holding the PID.

Two trainings writing one checkpoint folder would each delete or overwrite the other's steps, so
a second one is refused before any work, with a message naming the first one's PID. The kernel
drops a flock when its process ends, however it ends (kill -9 included): a killed run leaves no
lock behind, at most the file, which the next run simply locks again. A run that ends normally
removes the file.

Evaluation and inference only read a workdir's checkpoints and take no lock, so they can score a
run while it trains; the one checkpoint they would write (config.pretrained's step 0 in an empty
workdir, `pretrained.start_workdir`) is written under the lock, so it is refused while a training
holds the workdir. Only process 0 of a multi-process run takes the lock (the processes of one run
share the workdir).
"""

import contextlib
import fcntl
import os

LOCK_NAME = ".lock"

_held: dict[str, list] = {}  # lock path -> [fd, depth]: re-entrant within a process


class WorkdirBusyError(OSError):
  """Another process holds the workdir's lock; the message names it (an OSError without errno:
  `paths.describe_os_error` shows it as it is)."""


def _holder(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      pid = f.read().strip()
  except OSError:
    pid = ""
  return f"PID {pid}" if pid.isdigit() else "another process"


def _acquire(path: str, workdir: str) -> int:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      holder = _holder(path)
      kill = f" (kill {holder[4:]})" if holder.startswith("PID ") else ""
      raise WorkdirBusyError(  # pylint: disable=raise-missing-from
          f"--workdir: {workdir} is in use by another training run ({holder}, lock file {path}); "
          f"wait for it to end or stop it{kill}, or choose another --workdir") from None
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:  # the previous holder removed the file after we opened it
      same = False
    if same:
      os.ftruncate(fd, 0)
      os.write(fd, f"{os.getpid()}\n".encode())
      return fd
    os.close(fd)


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True):
  """Holds WORKDIR/.lock for the block (re-entrant in one process); raises WorkdirBusyError when
  another process holds it. `enabled=False` (processes other than 0) does nothing."""
  if not enabled:
    yield
    return
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  if path in _held:
    _held[path][1] += 1
  else:
    _held[path] = [_acquire(path, workdir), 1]
  try:
    yield
  finally:
    _held[path][1] -= 1
    if not _held[path][1]:
      fd = _held.pop(path)[0]
      with contextlib.suppress(OSError):
        os.remove(path)  # while still locked: a waiting process then retries on a fresh file
      os.close(fd)


def holder(workdir: str) -> str | None:
  """"PID 1234" (or "another process") when a training holds `workdir`'s lock, else None. Takes
  no lock and writes nothing: eval and compare ask it to explain a workdir changing under them."""
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return _holder(path)
  except OSError:
    return None
  finally:
    os.close(fd)  # drops a shared lock taken above
  return None


def release_all() -> None:
  """Removes the lock files this process holds: for an immediate exit (`os._exit`), after which
  the kernel drops the locks themselves."""
  for path in list(_held):
    with contextlib.suppress(OSError):
      os.remove(path)
