"""Which ops take the time: a `jax.profiler` trace of a few calls, summarised by HLO op.

`trace_top_ops` writes the trace (open it with TensorBoard's profile plugin, xprof or
ui.perfetto.dev) and returns the ops with the most self time, named by their JAX op path
(e.g. .../MEGAN/convlstm/.../l1_dcn/gather).
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
from collections.abc import Callable

import jax

PROFILE_STEPS = 3
PROFILE_TOP = 12


def trace_top_ops(step: Callable[[], None], trace_dir: str, hlo_text: str,
                  steps: int = PROFILE_STEPS) -> list:
  """Traces `steps` calls of `step` into `trace_dir`, prints and returns the top ops."""
  jax.profiler.start_trace(trace_dir)
  for i in range(steps):
    with jax.profiler.StepTraceAnnotation("step", step_num=i):
      step()
  jax.profiler.stop_trace()
  try:
    top_ops = summarize_profile(trace_dir, hlo_text, steps)
  except (OSError, ValueError, KeyError, TypeError) as exc:  # an unfamiliar trace layout
    print(f"[benchmark] could not summarise the trace in {trace_dir}: {exc!r}", file=sys.stderr)
    return []
  for op in top_ops:
    print(f"  {op['share']:6.1%} {op['ms_per_step']:9.2f} ms  {op['hlo_op']}  {op['op_name']}",
          file=sys.stderr)
  return top_ops


def _op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the JAX op path in its metadata (e.g. jit(f)/MEGAN/recon/.../conv)."""
  pattern = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]+)"')
  return {m.group(1): m.group(2) for m in map(pattern.match, hlo_text.splitlines()) if m}

def summarize_profile(trace_dir: str, hlo_text: str, steps: int, top: int = PROFILE_TOP) -> list:
  """The ops that take the most time in a jax.profiler trace: self time per step, by HLO op.

  Reads the newest *.trace.json.gz under `trace_dir`; counts the XLA op events (those with an
  "hlo_op") of the GPU/TPU streams, or of the host threads on a CPU, summed over threads. A loop's
  time excludes its body's ops, which are counted themselves.
  """
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    return []
  with gzip.open(paths[-1], "rt", encoding="utf-8") as f:
    events = json.load(f)["traceEvents"]
  processes = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  on_device = any(name.startswith("/device:") for name in processes.values())
  per_thread = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and "hlo_op" in e.get("args", {}) and (
        processes.get(e["pid"], "").startswith("/device:") or not on_device):
      per_thread[(e["pid"], e["tid"])].append(e)
  self_us = collections.Counter()
  for thread in per_thread.values():
    thread.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack = []  # enclosing events: (end time, hlo_op)
    for e in thread:
      while stack and stack[-1][0] <= e["ts"]:
        stack.pop()
      if stack:
        self_us[stack[-1][1]] -= e["dur"]
      self_us[e["args"]["hlo_op"]] += e["dur"]
      stack.append((e["ts"] + e["dur"], e["args"]["hlo_op"]))
  total = sum(self_us.values()) or 1.0
  names = _op_names(hlo_text)
  return [{"hlo_op": op, "ms_per_step": us / 1e3 / steps, "share": us / total,
           "op_name": names.get(op, "")} for op, us in self_us.most_common(top)]
