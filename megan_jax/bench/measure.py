"""How the benchmark times a program: compile time, median latency, FLOPs, peak memory.

A program is lowered and compiled (compile_s), run `warmup` times, then timed `repeats` times with
`jax.block_until_ready` after every call; "ms" is the median. TFLOP/s = FLOPs / median time. The
3x3-conv ceiling, when asked for, is timed in alternation with the cell (`measure`).

Peak memory is `device.memory_stats()["peak_bytes_in_use"]` where the backend reports it (GPU, TPU),
else the compiled executable's `memory_analysis()` (arguments + outputs + temporaries - aliased);
"peak_source" says which. The device peak is a process-wide high-water mark, so `run_cell_isolated`
runs a cell in a fresh subprocess. A cell that runs out of memory is recorded as "OOM".
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import jax
import numpy as np

from megan_jax import stop_signals
from megan_jax.bench import profile
from megan_jax.bench.programs import Cell, Program

MIN_PAIRS = 5      # the fewest (cell, conv) pairs a ceiling ratio is the median of
MAX_CONV_CALLS = 1000  # the most conv calls in the conv's half of a pair
_STOP_GRACE_S = 10  # how long a stopped cell subprocess may take to exit before it is killed


def total_flops(cost) -> float | None:
  """"flops" of a cost analysis: a dict (newer JAX), a list of per-module dicts (older JAX) or None."""
  if isinstance(cost, dict):
    cost = [cost]
  flops = [c["flops"] for c in cost or () if c and c.get("flops") is not None]
  return float(sum(flops)) if flops else None


def is_oom(exc: BaseException) -> bool:
  """True for an accelerator or host out-of-memory error."""
  text = str(exc).lower()
  return isinstance(exc, MemoryError) or any(
      s in text for s in ("resource_exhausted", "resource exhausted", "out of memory"))


def _call(compiled, args: tuple, threads_state: bool) -> tuple:
  """Runs one call to completion; returns the next call's arguments."""
  out = jax.block_until_ready(compiled(*args))
  return (out[0],) + args[1:] if threads_state else args


def _memory(compiled, device_peak: bool) -> dict:
  """Peak bytes: the device's high-water mark if asked for and reported, else the executable's."""
  result = {"peak_bytes": None, "peak_source": None}
  analysis = compiled.memory_analysis()
  if analysis is not None:
    m = {f: int(getattr(analysis, f)) for f in ("argument_size_in_bytes", "output_size_in_bytes",
                                                 "temp_size_in_bytes", "alias_size_in_bytes")}
    result.update(memory_analysis=m, peak_source="memory_analysis",
                  peak_bytes=(m["argument_size_in_bytes"] + m["output_size_in_bytes"]
                              + m["temp_size_in_bytes"] - m["alias_size_in_bytes"]))
  stats = jax.local_devices()[0].memory_stats() if device_peak else None
  if stats and "peak_bytes_in_use" in stats:
    result.update(peak_bytes=int(stats["peak_bytes_in_use"]), peak_source="memory_stats")
  return result


def count_flops(program: Program) -> float | None:
  """FLOPs per call, from the loop-free twin (lowered only: no compilation, no device memory)."""
  twin = program.count_fn or program.fn
  return total_flops(twin.lower(*(program.count_args if program.count_fn else program.args))
                     .cost_analysis())


def _compile(program: Program) -> tuple:
  """The compiled program, its compile time in seconds and its FLOPs per call."""
  start = time.perf_counter()
  lowered = program.fn.lower(*program.args)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops = total_flops(lowered.cost_analysis()) if program.count_fn is None else count_flops(program)
  return compiled, compile_s, flops


def _timed(compiled, args: tuple, threads_state: bool) -> tuple:
  """One call's seconds and the next call's arguments."""
  start = time.perf_counter()
  args = _call(compiled, args, threads_state)
  return time.perf_counter() - start, args


def measure(program: Program, *, warmup: int, repeats: int, profile_dir: str | None = None,
            device_peak: bool = True, ceiling: Program | None = None) -> dict:
  """Compile time, median ms, items/s, FLOPs, TFLOP/s and peak memory of one program.

  With `ceiling` (`programs.ceiling_program`), the two programs are timed in alternation, cell
  then conv, for max(repeats, MIN_PAIRS) pairs, and each pair gives one ratio of the cell's
  TFLOP/s to the conv's: "vs_conv3x3" is their median, "vs_conv3x3_range" their min and max. The
  conv's half of a pair is as many back-to-back calls as take about one call of the cell (a
  single conv of a train cell lasts a few ms, at the mercy of the scheduler), and its time is
  their mean. A load that comes and goes then weighs on both halves of a pair alike, which timing
  the conv after all of the cell's calls did not (issue 29: 0.47x and 1.13x for one cell).
  """
  compiled, compile_s, flops = _compile(program)
  args = program.args
  for _ in range(warmup):
    args = _call(compiled, args, program.threads_state)
  conv = None
  if ceiling is not None:
    conv_compiled, _, conv_flops = _compile(ceiling)
    conv_args = ceiling.args
    for _ in range(warmup):
      conv_args = _call(conv_compiled, conv_args, ceiling.threads_state)
    # One untimed-for-the-result call of each sizes the conv's half of a pair: `calls` calls of
    # the conv take about as long as one of the cell.
    cell_s, args = _timed(compiled, args, program.threads_state)
    conv_s, conv_args = _timed(conv_compiled, conv_args, ceiling.threads_state)
    calls = int(min(MAX_CONV_CALLS, max(1, round(cell_s / max(conv_s, 1e-9)))))
  times, conv_times = [], []
  for _ in range(repeats if ceiling is None else max(repeats, MIN_PAIRS)):
    seconds, args = _timed(compiled, args, program.threads_state)
    times.append(seconds)
    if ceiling is not None:
      start = time.perf_counter()
      for _ in range(calls):
        conv_args = _call(conv_compiled, conv_args, ceiling.threads_state)
      conv_times.append((time.perf_counter() - start) / calls)
  if ceiling is not None:
    conv = _ratios(flops, times, conv_flops, conv_times)
    conv["conv3x3"]["calls_per_pair"] = calls
  top_ops = None
  if profile_dir:
    state = {"args": args}

    def step():
      state["args"] = _call(compiled, state["args"], program.threads_state)

    top_ops = profile.trace_top_ops(step, profile_dir, compiled.as_text())
  seconds = float(np.median(times))
  return {"status": "ok", "compile_s": compile_s, "ms": 1e3 * seconds,
          "times_ms": [1e3 * t for t in times], "items_per_s": program.items_per_call / seconds,
          "flops": flops, "tflops_per_s": flops / seconds / 1e12 if flops else None,
          **_memory(compiled, device_peak), "profile_top_ops": top_ops, **(conv or {})}


def _ratios(flops: float | None, times: list, conv_flops: float | None, conv_times: list) -> dict:
  """The conv ceiling's figures and the cell's pairwise TFLOP/s ratios to it."""
  conv_s = float(np.median(conv_times))
  result = {"conv3x3": {"ms": 1e3 * conv_s, "times_ms": [1e3 * t for t in conv_times],
                        "flops": conv_flops,
                        "tflops_per_s": conv_flops / conv_s / 1e12 if conv_flops else None},
            "vs_conv3x3": None, "vs_conv3x3_range": None}
  if flops and conv_flops:
    # (flops / t) / (conv_flops / c) for each pair (t, c) timed back to back
    ratios = [flops * c / (conv_flops * t) for t, c in zip(times, conv_times)]
    result.update(vs_conv3x3=float(np.median(ratios)),
                  vs_conv3x3_range=[float(min(ratios)), float(max(ratios))])
  return result


def _device() -> dict:
  d = jax.local_devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind}


def record(cell: Cell) -> dict:
  """The cell's fields as they appear in a result."""
  return {**dataclasses.asdict(cell), "size": f"{cell.size[0]}x{cell.size[1]}",
          "overrides": dict(cell.overrides), "name": cell.name}


def run_cell(cell: Cell, make_program: Callable[[Cell], Program], *, warmup: int, repeats: int,
             profile_dir: str | None = None, device_peak: bool = True,
             flops_only: bool = False,
             make_ceiling: Callable[[Cell], Program] | None = None) -> dict:
  """Measures one cell in this process (and its conv ceiling, if `make_ceiling`); an error
  becomes status "OOM" (out of memory) or "error"."""
  result = record(cell)
  print(f"[benchmark] {cell.name} ...", file=sys.stderr, flush=True)
  try:
    program = make_program(cell)
    trace = os.path.join(profile_dir, cell.name) if profile_dir else None
    if flops_only:
      result.update(status="flops-only", flops=count_flops(program), **_device())
    else:
      result.update(measure(program, warmup=warmup, repeats=repeats, profile_dir=trace,
                            device_peak=device_peak,
                            ceiling=make_ceiling(cell) if make_ceiling else None), **_device())
  except Exception as exc:  # pylint: disable=broad-except
    if not is_oom(exc):
      traceback.print_exc()
    result.update(status="OOM" if is_oom(exc) else "error",
                  error=f"{type(exc).__name__}: {str(exc).strip()[:500]}")
  return result


def run_cell_isolated(cell: Cell, *, warmup: int, repeats: int, profile_dir: str | None) -> dict:
  """`run_cell` in a fresh `python -m megan_jax.benchmark --cell=...` process, so that the device
  peak is this cell's alone.

  The child runs in its own session, so that a terminal's Ctrl-C reaches this process only; when
  this process is stopped (KeyboardInterrupt, or the exception a SIGTERM handler raises) while it
  waits, the child is terminated (killed after a grace period) before the exception propagates.
  """
  result = record(cell)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "cell.json")
    cmd = [sys.executable, "-m", "megan_jax.benchmark", f"--cell={json.dumps(dataclasses.asdict(cell))}",
           f"--cell-out={out}", f"--warmup={warmup}", f"--repeats={repeats}"]
    if profile_dir:
      cmd.append(f"--profile={profile_dir}")
    child = None
    try:
      child, held = _start(cmd, env)
      for signum in held:  # to the handlers they were held back from, now that `child` is known
        signal.raise_signal(signum)
      rc = child.wait()
    except BaseException:
      if child is not None:
        stop(child)
      raise
    if os.path.exists(out):
      with open(out, encoding="utf-8") as f:
        return json.load(f)
  if rc in (-9, 137):  # SIGKILL: the kernel's out-of-memory killer, most likely
    return {**result, "status": "OOM", "error": "process killed (SIGKILL), host out of memory?"}
  return {**result, "status": "error", "error": f"benchmark subprocess exited with code {rc}"}


def _start(cmd: list[str], env: dict) -> tuple[subprocess.Popen, list[int]]:
  """Starts a cell subprocess in its own session, holding the stop signals back meanwhile (an
  exception raised inside Popen would lose the child); returns it and the signals held back."""
  held = []
  previous = {s: signal.signal(s, lambda signum, frame: held.append(signum))
              for s in stop_signals.SIGNALS}
  try:
    child = subprocess.Popen(cmd, env=env, start_new_session=True)  # pylint: disable=R1732
    return child, held
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def stop(child: subprocess.Popen) -> None:
  """SIGTERM to a cell subprocess, SIGKILL if it has not exited after a grace period."""
  if child.poll() is None:
    child.send_signal(signal.SIGTERM)
    try:
      child.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()
