"""Keeps orbax's reports of a failed save off the screen: `checkpointing` says it in one line.

A save that fails in orbax's background threads (disk full, folder turned read-only) is reported
four times by orbax's own error log, then by asyncio for each aborted write ("Task exception was
never retrieved") and by each write's completion callback that arrives after orbax closed the event
loop ("Event loop is closed", through `sys.unraisablehook`); a write's coroutine that the aborted
loop never ran is reported once more at exit ("coroutine 'async_serialize_from_host.<locals>.
write_fragment' was never awaited", a RuntimeWarning). Installed on import: orbax's error
records are shown only at debug verbosity (--verbosity=1), without their tracebacks; the other
three are dropped. Also drops orbax's warning for saves without a validation score (expected between
validations), and its warning for a step a running training deleted while an eval read it.
"""

import logging
import os
import sys
import threading
import warnings

SAVE_FAILED = threading.Event()  # set by checkpointing once a save failed: its writes report late


def _through(exc, *packages: str) -> bool:
  """Whether the traceback of `exc` passes through a file of one of `packages`."""
  tb = getattr(exc, "__traceback__", None)
  while tb is not None:
    if any(f"{os.sep}{p}{os.sep}" in tb.tb_frame.f_code.co_filename for p in packages):
      return True
    tb = tb.tb_next
  return False


class _NoMetricsFilter(logging.Filter):
  """Drops orbax's warning for saves without a validation score: expected between validations."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


class _DeletedStepFilter(logging.Filter):
  """Drops orbax's "Metadata file does not exist: .../<step>/_CHECKPOINT_METADATA" when that step's
  folder is gone: a running training deleted the step an eval was reading, which reads anew."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if not message.startswith("Metadata file does not exist: "):
      return True
    return os.path.isdir(os.path.dirname(message.split(": ", 1)[1].strip()))


class _QuietOrbaxErrors(logging.Filter):
  """Shows orbax's own error records only at debug verbosity, without their traceback: a failed
  background save logs four of them, and `save`/`wait` report the failure in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
      record.exc_info, record.exc_text = None, None
      record.levelno, record.levelname = logging.DEBUG, "DEBUG"
      return logging.getLogger("absl").isEnabledFor(logging.DEBUG)
    return True


class _QuietAbortedWrites(logging.Filter):
  """Drops asyncio's reports of the exceptions of aborted checkpoint writes (after a failed save, or
  raised inside orbax or tensorstore): the failed save reports them."""

  def filter(self, record: logging.LogRecord) -> bool:
    if "exception was never retrieved" not in record.getMessage():
      return True
    exc = record.exc_info[1] if record.exc_info else None
    return not (SAVE_FAILED.is_set() or _through(exc, "orbax", "tensorstore"))


def _quiet_unraisable(previous):
  """sys.unraisablehook that drops the "Event loop is closed" of a write's completion callback
  arriving after orbax closed the write's event loop (an aborted save: its failure is reported
  by the save itself)."""

  def hook(unraisable):
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
      tb = tb.tb_next
    late = (isinstance(unraisable.exc_value, RuntimeError) and tb is not None
            and str(unraisable.exc_value) == "Event loop is closed"
            and f"asyncio{os.sep}base_events.py" in tb.tb_frame.f_code.co_filename)
    if not late:
      previous(unraisable)

  return hook


logging.getLogger("absl").addFilter(_NoMetricsFilter())
logging.getLogger("absl").addFilter(_QuietOrbaxErrors())
logging.getLogger("absl").addFilter(_DeletedStepFilter())
logging.getLogger("asyncio").addFilter(_QuietAbortedWrites())
sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
# orbax's write coroutines only (the qualified name of orbax's serialisation function).
warnings.filterwarnings("ignore", message=r"coroutine 'async_serialize_from_host\.<locals>\.\w+' "
                        r"was never awaited", category=RuntimeWarning)
