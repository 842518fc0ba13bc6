"""Progress output for train, eval and infer: tqdm bars on stderr, notes on stdout.

JAX compiles a jitted function at its first call, which takes minutes on a CPU for MEGAN: a rate
measured from the start would count the compile and make every ETA far too long. So the compile
is announced and timed on its own (`compiling`), and a bar is started after the first step or
window (`bar(..., initial=done)`, no smoothing), so that its rate and ETA count compiled work only.
"""

import contextlib
import io
import math
import sys
import time

import jax
import tqdm

TERMINAL_INTERVAL = 0.5  # seconds between bar refreshes on a terminal
FILE_INTERVAL = 30.0     # ... and when stderr goes to a file or a pipe (one line per refresh there)


def format_duration(seconds: float) -> str:
  """1h02m03s, 2m03s, or ? for an unknown duration."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def note(message: str) -> None:
  """Prints a line on stdout above any active bar (on process 0 only)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


@contextlib.contextmanager
def compiling(what: str):
  """Notes `compiling <what> ...` before the block and the time it took after it."""
  note(f"compiling {what} (first time takes minutes on a CPU)")
  start = time.perf_counter()
  yield
  note(f"compiled {what} and ran it once in {format_duration(time.perf_counter() - start)}")


class _Nowhere(io.TextIOBase):
  """A file that discards what is written: where a hidden bar draws."""

  def write(self, s: str) -> int:
    return len(s)


def bar(total: int, desc: str, *, unit: str, initial: int = 0, shown: bool = True) -> tqdm.tqdm:
  """A tqdm bar on stderr whose rate is the mean since its creation (`initial` units done before).

  A bar not `shown` draws nowhere but still measures, for `speed`.
  """
  interactive = sys.stderr.isatty()
  return tqdm.tqdm(total=total, desc=desc, unit=unit, initial=initial,
                   file=sys.stderr if shown else _Nowhere(), smoothing=0,
                   dynamic_ncols=interactive,
                   mininterval=TERMINAL_INTERVAL if interactive else FILE_INTERVAL)


def speed(progress: tqdm.tqdm) -> dict[str, float]:
  """{"per_sec", "eta_sec"} of `progress` since it was created; {} before a unit has passed."""
  d = progress.format_dict
  done = d["n"] - d["initial"]
  if done <= 0 or d["elapsed"] <= 0:
    return {}
  rate = done / d["elapsed"]
  return {"per_sec": rate, "eta_sec": (d["total"] - d["n"]) / rate}
