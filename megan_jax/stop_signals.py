"""SIGTERM, SIGHUP and SIGINT (Ctrl-C): training saves and stops, or stops at once; eval and infer stop.

A scheduler's SIGTERM, a closed terminal's SIGHUP and a first Ctrl-C are recorded by `StopSignals`;
the training loop saves a checkpoint at the end of the step and raises `Interrupted` (exit status
128 + the signal's number). Two cases cannot wait for the loop, because Python runs a signal
handler only between bytecodes and XLA compiles (minutes on a CPU) in C++:
- before the first step has finished (restoring, compiling) there is nothing to save: the run stops
  at once;
- a second signal aborts at once, without saving the current step (the checkpoints on disk are
  intact: orbax writes a save to a temporary folder that only a finished save renames).
Both are noticed by a thread woken through `signal.set_wakeup_fd` (the C-level handler writes the
signal's number to a pipe even while the main thread is inside XLA), which prints one line and
ends the process with `os._exit` (after killing its data-loading worker processes).

`stop_on_signals` turns the same signals during an eval or infer run into `Interrupted`, which
main.py reports in one line (exit 128 + the signal number, as training does).
"""

import _thread
import contextlib
import multiprocessing
from multiprocessing import resource_tracker
import os
import signal
import sys
import threading

from absl import logging

from megan_jax import checkpointing, workdir_lock

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
# multiprocessing's resource tracker (a child interpreter started with our -W options) frees the
# workers' shared memory after `os._exit`; its "There appear to be N leaked ..." lines would
# follow the one line that says what happened.
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"


class Interrupted(RuntimeError):
  """SIGTERM/SIGHUP/SIGINT stopped a run; `exit_code` is 128 + the signal number."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


def _name(signum: int) -> str:
  return signal.Signals(signum).name


@contextlib.contextmanager
def stop_on_signals(what: str, advice: str = "rerun the same command to start again"):
  """Within the block, SIGINT (Ctrl-C), SIGTERM and SIGHUP raise `Interrupted` in the main thread:
  "stopped by SIGINT (Ctrl-C) during <what>; <advice>". The first one only: later ones are ignored
  while the exception unwinds, so that the cleanup on the way (`paths.staged`) completes. A signal
  that was ignored before (SIGHUP under nohup) stays ignored; off the main thread nothing changes.
  One that lands where Python cannot raise (a gc callback, a __del__) is delivered again.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught = [s for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]

  dropped, timers = [], []  # the signal of an Interrupted that Python dropped; its redelivery

  def handle(signum, frame):
    del frame
    dropped.clear()
    for s in caught:
      signal.signal(s, signal.SIG_IGN)
    name = signal.Signals(signum).name + (" (Ctrl-C)" if signum == signal.SIGINT else "")
    raise Interrupted(f"stopped by {name} during {what}; {advice}", signum)

  def swallowed(unraisable):
    """Python drops an exception raised where it cannot propagate (a gc callback such as jax's
    `_xla_gc_callback`, a __del__): the signal is delivered again a moment later, from another
    thread, to land in the block's own code (or at its end)."""
    if not isinstance(unraisable.exc_value, Interrupted):
      previous_hook(unraisable)
      return
    signum = unraisable.exc_value.exit_code - 128
    dropped[:] = [signum]
    for s in caught:
      signal.signal(s, handle)
    timer = threading.Timer(0.05, lambda: dropped and _thread.interrupt_main(signum))
    timers.append(timer)
    timer.start()

  previous = {s: signal.signal(s, handle) for s in caught}
  previous_hook, sys.unraisablehook = sys.unraisablehook, swallowed
  try:
    yield
    if dropped:  # the block ended before the signal came back
      handle(dropped[0], None)
  finally:
    dropped.clear()
    for timer in timers:
      timer.cancel()
      timer.join()
    sys.unraisablehook = previous_hook
    for s, handler in previous.items():
      signal.signal(s, handler)


class StopSignals:
  """Context manager: `signum` is the first stop signal received (None before); call `started()`
  once the first step has finished. Does nothing outside the main thread."""

  def __init__(self, checkpoint_dir: str):
    self.signum = None
    self._checkpoint_dir = checkpoint_dir
    self._lock = threading.Lock()
    self._started = False
    self._count = 0
    self._previous = {}
    self._pipe = None
    self._previous_fd = None
    self._thread = None

  def started(self) -> None:
    """From now on a first signal waits for the end of the step (there is something to save)."""
    with self._lock:
      self._started = True

  @contextlib.contextmanager
  def sparing_children(self, children: bool = True):
    """Child processes started in the block (grain's data workers, multiprocessing's resource
    tracker) never act on SIGINT and SIGHUP: a terminal's Ctrl-C or hang-up reaches the whole
    process group, and this process decides. The main thread blocks them for the block (a child
    inherits its mask across fork and exec, and a Python started with them blocked keeps them
    pending for ever); this process still acts on them at once, through its other threads, or,
    were they all to block them too, as soon as the block ends: a signal is never dropped.
    SIGTERM, which ends the children when this process exits, stays."""
    spared = {signal.SIGINT, signal.SIGHUP}
    if not self._previous or not children:  # `children`: whether the block starts any
      yield
      return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, spared)
    try:
      # Starting multiprocessing's resource tracker unblocks SIGINT in this thread when done (its
      # own guard, SIG_UNBLOCK rather than a restore); started here, it is running before the
      # block's children, and the mask is set again for them.
      resource_tracker.ensure_running()
      signal.pthread_sigmask(signal.SIG_BLOCK, spared)
      yield
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

  def _handle(self, signum, frame):  # the main thread, between bytecodes
    del frame
    if self.signum is None and self._started:  # before that, the watcher has ended the process
      self.signum = signum
      again = "Ctrl-C" if signum == signal.SIGINT else _name(signum)
      logging.warning("received %s: saving a checkpoint at the end of this step (%s again stops "
                      "at once without saving it)", _name(signum), again)

  def _exit_now(self, line: str, signum: int) -> None:
    for child in multiprocessing.active_children():  # grain's workers: os._exit leaves them
      child.kill()
    workdir_lock.release_all()
    os.write(2, f"megan_jax: error: {line}\n".encode())
    os._exit(128 + signum)  # pylint: disable=protected-access

  def _on_signal(self, signum: int) -> None:  # the watcher thread
    with self._lock:
      self._count += 1
      if not self._started:
        self._exit_now(f"stopped by {_name(signum)} before the first training step finished: "
                       f"nothing to save; rerun the same command to start", signum)
      if self._count >= 2:
        steps = checkpointing.saved_steps(self._checkpoint_dir)
        kept = (f"the checkpoints in {self._checkpoint_dir} (steps {steps}) are intact; rerun the "
                f"same command to resume from step {steps[-1]}" if steps else
                "no checkpoint was saved; rerun the same command to start again")
        self._exit_now(f"aborted by a second {_name(signum)} without saving this step; {kept}",
                       signum)

  def _watch(self, read_fd: int) -> None:
    while data := os.read(read_fd, 64):
      for signum in data:
        if signum in SIGNALS:
          self._on_signal(signum)

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    if _QUIET_TRACKER not in sys.warnoptions:
      sys.warnoptions.append(_QUIET_TRACKER)
    self._pipe = os.pipe()
    os.set_blocking(self._pipe[1], False)
    self._thread = threading.Thread(target=self._watch, args=(self._pipe[0],), daemon=True,
                                    name="megan_jax stop signals")
    self._thread.start()
    self._previous_fd = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
    for s in SIGNALS:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    if self._pipe is not None:
      signal.set_wakeup_fd(self._previous_fd)
      os.close(self._pipe[1])  # the watcher reads the end of the pipe and returns
      self._thread.join()
      os.close(self._pipe[0])
