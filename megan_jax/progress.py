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


_HITS, _WRITES = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
_cache = {"dir": None, _HITS: 0, _WRITES: 0}  # the persistent cache's directory, event counts


def _count_cache_event(event: str, **_) -> None:
  if event in (_HITS, _WRITES):
    _cache[event] += 1


def watch_compilation_cache(directory: str) -> None:
  """Counts the persistent compilation cache's reads and writes (JAX's monitoring events), so that
  `compiling` can say where a program came from; `directory` is named in its line."""
  if _cache["dir"] is None:
    jax.monitoring.register_event_listener(_count_cache_event)
  _cache["dir"] = directory


def _cache_words(hits: int, writes: int) -> str:
  """What the persistent compilation cache did during a compile, in words ("" when nothing)."""
  where = _cache["dir"]
  if hits and not writes:
    return f"; loaded from the compilation cache {where}"
  if hits:
    return (f"; {hits} of its programs loaded from the compilation cache {where}, {writes} "
            f"compiled and added to it")
  if writes:
    return f"; saved in the compilation cache {where}: the next run of this size loads it"
  return ""


@contextlib.contextmanager
def compiling(what: str):
  """Notes `compiling <what> ...` before the block and, after it, the time it took and whether the
  program came from (or went into) the persistent compilation cache."""
  note(f"compiling {what} (first time takes minutes on a CPU)")
  start = time.perf_counter()
  hits, writes = _cache[_HITS], _cache[_WRITES]
  yield
  note(f"compiled {what} and ran it once in {format_duration(time.perf_counter() - start)}"
       f"{_cache_words(_cache[_HITS] - hits, _cache[_WRITES] - writes)}")


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
