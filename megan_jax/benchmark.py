r"""Speed, memory and FLOPs of MEGAN inference and training (results in docs/BENCHMARKS.md).

    python -m megan_jax.benchmark --json=bench.json              # accelerator table: megan + zsm
    python -m megan_jax.benchmark --cpu-small --json=cpu.json    # small sizes for a CPU
    python -m megan_jax.benchmark --variants=megan --mode=infer --sizes=144x180 \
        --dtypes=bfloat16 --repeats=20 --profile=/tmp/trace      # one cell, with a profiler trace

A cell is one (mode, variant, dtype, size). Its program is lowered and compiled (compile_s), run
`--warmup` times, then timed `--repeats` times with `jax.block_until_ready` after every call; "ms" is
the median. Modes:
- infer: one forward pass (train=False) of B windows (B, n+1, h, w, 3) -> (B, 2n+1, 4h, 4w, 3);
  items/s are output frames per second (2n+1 = 7 per window).
- train: one `megan_jax.train` step (Adam, Charbonnier loss) on B clips of (n+1) x crop x crop LR and
  (2n+1) x 4crop x 4crop GT frames; items/s are clips per second. One device, no mesh.

FLOPs are XLA's cost analysis. XLA counts a while loop's body once whatever its trip count, so they
are counted on a loop-free twin of the program (the ConvLSTM scan unrolled, the non-local attention
unchunked, the `jnp` deformable convolution: the same arithmetic), which is lowered but never compiled.
TFLOP/s = FLOPs / median time. --flops-only stops there: it never compiles or runs, so it counts the
FLOPs of accelerator-sized cells on a CPU.

Peak memory is `device.memory_stats()["peak_bytes_in_use"]` where the backend reports it (GPU, TPU),
else the compiled executable's `memory_analysis()` (arguments + outputs + temporaries - aliased);
"peak_source" says which. The device peak is a process-wide high-water mark, so each cell runs in a
fresh subprocess unless --no-isolate (which reports only the executable's estimate). A cell that runs
out of memory is recorded as "OOM" and the run goes on.

--json=FILE is rewritten after every cell ("complete": false until the last), so a run killed by a
time limit keeps what it measured; --time-budget=SECONDS starts no cell that could end past the
budget (judged by the longest cell so far in this run) and records the rest as "skipped".
--deadline=UNIX_SECONDS does the same against a wall-clock time, so several runs chained in one
job share one limit: `END=$(( $(date +%s) + 480 ))`, then `--deadline=$END` on each.

--profile=DIR writes a `jax.profiler` trace of 3 more calls of each cell to DIR/<cell> (open it with
TensorBoard's profile plugin, xprof or ui.perfetto.dev) and prints the ops with the most self time,
named by their JAX op path (e.g. .../MEGAN/convlstm/.../l1_dcn/gather), into "profile_top_ops".
"""

import argparse
import collections
import dataclasses
import datetime
import glob
import gzip
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

NUM_INPUT_FRAMES = 4                        # n + 1 LR frames per window
NUM_OUTPUT_FRAMES = 2 * NUM_INPUT_FRAMES - 1  # 2n + 1
SCALE = 4
LOSS_EPS = 1e-3  # the Charbonnier eps of configs/vimeo.py
PROFILE_STEPS = 3
PROFILE_TOP = 12


@dataclasses.dataclass(frozen=True)
class Cell:
  """One measurement; `size` is the LR (h, w): the frame for infer, the crop for train."""
  mode: str      # "infer" | "train"
  variant: str   # a megan_jax.models.VARIANTS name
  dtype: str     # compute dtype, "float32" | "bfloat16"
  size: tuple[int, int]
  batch: int
  overrides: tuple[tuple[str, object], ...] = ()  # model config fields, e.g. (("scan_unroll", 7),)

  @property
  def name(self) -> str:
    return f"{self.mode}-{self.variant}-{self.dtype}-{self.size[0]}x{self.size[1]}-b{self.batch}"


@dataclasses.dataclass
class Program:
  """A jitted function with its arguments, and the loop-free twin whose FLOPs are counted."""
  fn: Callable
  args: tuple
  count_fn: Callable | None  # None: `fn` itself has no loops
  count_args: tuple
  items_per_call: int          # output frames (infer) or clips (train)
  threads_state: bool = False  # fn returns (state, ...) and state is the next call's first argument


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


def parse_sizes(text: str) -> list[tuple[int, int]]:
  """'144x180,272x480' -> [(144, 180), (272, 480)]."""
  sizes = []
  for item in filter(None, text.split(",")):
    parts = item.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
      raise ValueError(f"--sizes: {item!r} is not HxW (e.g. 144x180)")
    sizes.append((int(parts[0]), int(parts[1])))
  return sizes


def parse_override(text: str) -> tuple[str, object]:
  """'scan_unroll=7' -> ("scan_unroll", 7); values are ints, floats, true/false or strings."""
  key, sep, raw = text.partition("=")
  if not sep or not key:
    raise ValueError(f"--override {text!r} is not FIELD=VALUE (e.g. attention_impl=cudnn)")
  if raw.lower() in ("true", "false"):
    return key, raw.lower() == "true"
  for kind in (int, float):
    try:
      return key, kind(raw)
    except ValueError:
      pass
  return key, raw


def _models(cell: Cell):
  """The timed model and its loop-free twin (see the module docstring; None if it is the model)."""
  from megan_jax.models import build_model, model_config  # pylint: disable=import-outside-toplevel
  cfg = model_config(cell.variant)
  cfg.dtype = cell.dtype
  for key, value in cell.overrides:
    if key not in cfg:
      raise ValueError(f"--override {key}={value}: no field {key!r} in model_config({cell.variant!r})")
    if isinstance(cfg[key], float) and isinstance(value, int):
      value = float(value)
    if type(value) is not type(cfg[key]):  # pylint: disable=unidiomatic-typecheck
      raise ValueError(f"--override {key}={value!r}: model_config({cell.variant!r}).{key} is a "
                       f"{type(cfg[key]).__name__} ({cfg[key]!r})")
    cfg[key] = value
  twin = ml_collections.ConfigDict(cfg.to_dict())
  twin.update(scan_unroll=NUM_OUTPUT_FRAMES, attention_impl="full", deform_impl="jnp")
  loop_free = cfg.scan_unroll >= NUM_OUTPUT_FRAMES and cfg.attention_impl == "full" and (
      cfg.deform_impl == "jnp")
  return build_model(cfg), None if loop_free else build_model(twin)


_PARAMS: dict = {}  # (variant, overrides) -> parameters, shared by the cells of one process


def _init_params(cell: Cell, model):
  """The parameters a seed-0 training run starts from (float32 whatever the compute dtype), copied:
  a train step donates its state."""
  if (cell.variant, cell.overrides) not in _PARAMS:
    from megan_jax import train  # pylint: disable=import-outside-toplevel
    x = jnp.zeros((1, NUM_INPUT_FRAMES, 16, 16, 3))  # (B, n+1, h, w, 3); parameters are size-free
    key = jnp.asarray(train.rng_streams(0)["params"])
    _PARAMS[cell.variant, cell.overrides] = jax.jit(
        lambda k: model.init({"params": k, "lmga": k}, x, train=False))(key)["params"]
  return jax.tree.map(jnp.copy, _PARAMS[cell.variant, cell.overrides])


def infer_program(cell: Cell) -> Program:
  """B windows through the model, train=False."""
  model, twin = _models(cell)
  variables = {"params": _init_params(cell, model)}
  shape = (cell.batch, NUM_INPUT_FRAMES) + cell.size + (3,)  # (B, n+1, h, w, 3)
  x = jax.random.uniform(jax.random.key(0), shape)
  forward = lambda m: None if m is None else jax.jit(lambda v, lr: m.apply(v, lr, train=False))
  return Program(forward(model), (variables, x), forward(twin), (variables, x),
                 items_per_call=cell.batch * NUM_OUTPUT_FRAMES)


def _optimizer_config() -> ml_collections.ConfigDict:
  """The paper's optimiser as in configs/vimeo.py (the schedule's values do not change the cost)."""
  return ml_collections.ConfigDict(dict(
      num_steps=600_000,
      optimizer=dict(lr=1e-4, min_lr=1e-7, cycle_steps=20_000, restarts=None, b1=0.9, b2=0.99)))


def train_program(cell: Cell) -> Program:
  """One `megan_jax.train` step (forward, backward, Adam update) on a random batch."""
  from megan_jax import train  # pylint: disable=import-outside-toplevel
  model, twin = _models(cell)
  tx, _ = train.make_optimizer(_optimizer_config())
  state = train.new_state(_init_params(cell, model), tx)
  key_lr, key_gt = jax.random.split(jax.random.key(1))
  h, w = cell.size
  batch = {"lr": jax.random.uniform(key_lr, (cell.batch, NUM_INPUT_FRAMES, h, w, 3)),
           "gt": jax.random.uniform(key_gt, (cell.batch, NUM_OUTPUT_FRAMES, SCALE * h, SCALE * w, 3))}
  rng = jnp.asarray(train.rng_streams(0)["lmga"])
  step = lambda m: None if m is None else jax.jit(train.make_train_step(m, tx, LOSS_EPS),
                                                  donate_argnums=(0,))
  # The twin is only lowered: it may share (and never donates) the state's buffers.
  return Program(step(model), (state, batch, rng), step(twin), (state, batch, rng),
                 items_per_call=cell.batch, threads_state=True)


PROGRAMS = {"infer": infer_program, "train": train_program}


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


def measure(program: Program, *, warmup: int, repeats: int, profile_dir: str | None = None,
            device_peak: bool = True) -> dict:
  """Compile time, median ms, items/s, FLOPs, TFLOP/s and peak memory of one program."""
  start = time.perf_counter()
  lowered = program.fn.lower(*program.args)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops = total_flops(lowered.cost_analysis()) if program.count_fn is None else count_flops(program)
  args = program.args
  for _ in range(warmup):
    args = _call(compiled, args, program.threads_state)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    args = _call(compiled, args, program.threads_state)
    times.append(time.perf_counter() - start)
  top_ops = None
  if profile_dir:
    jax.profiler.start_trace(profile_dir)
    for step in range(PROFILE_STEPS):
      with jax.profiler.StepTraceAnnotation("step", step_num=step):
        args = _call(compiled, args, program.threads_state)
    jax.profiler.stop_trace()
    try:
      top_ops = summarize_profile(profile_dir, compiled.as_text(), PROFILE_STEPS)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # an unfamiliar trace layout
      print(f"[benchmark] could not summarise the trace in {profile_dir}: {exc!r}", file=sys.stderr)
      top_ops = []
    for op in top_ops:
      print(f"  {op['share']:6.1%} {op['ms_per_step']:9.2f} ms  {op['hlo_op']}  {op['op_name']}",
            file=sys.stderr)
  seconds = float(np.median(times))
  return {"status": "ok", "compile_s": compile_s, "ms": 1e3 * seconds,
          "times_ms": [1e3 * t for t in times], "items_per_s": program.items_per_call / seconds,
          "flops": flops, "tflops_per_s": flops / seconds / 1e12 if flops else None,
          **_memory(compiled, device_peak), "profile_top_ops": top_ops}


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


def _device() -> dict:
  d = jax.local_devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind}


def _record(cell: Cell) -> dict:
  return {**dataclasses.asdict(cell), "size": f"{cell.size[0]}x{cell.size[1]}",
          "overrides": dict(cell.overrides), "name": cell.name}


def run_cell(cell: Cell, *, warmup: int, repeats: int, profile_dir: str | None = None,
             device_peak: bool = True, flops_only: bool = False) -> dict:
  """Measures one cell in this process; an error becomes status "OOM" (out of memory) or "error"."""
  record = _record(cell)
  print(f"[benchmark] {cell.name} ...", file=sys.stderr, flush=True)
  try:
    program = PROGRAMS[cell.mode](cell)
    trace = os.path.join(profile_dir, cell.name) if profile_dir else None
    if flops_only:
      record.update(status="flops-only", flops=count_flops(program), **_device())
    else:
      record.update(measure(program, warmup=warmup, repeats=repeats, profile_dir=trace,
                            device_peak=device_peak), **_device())
  except Exception as exc:  # pylint: disable=broad-except
    if not is_oom(exc):
      traceback.print_exc()
    record.update(status="OOM" if is_oom(exc) else "error",
                  error=f"{type(exc).__name__}: {str(exc).strip()[:500]}")
  return record


def run_cell_isolated(cell: Cell, *, warmup: int, repeats: int, profile_dir: str | None) -> dict:
  """`run_cell` in a fresh Python process, so the device peak is this cell's alone."""
  record = _record(cell)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "cell.json")
    cmd = [sys.executable, "-m", "megan_jax.benchmark", f"--cell={json.dumps(dataclasses.asdict(cell))}",
           f"--cell-out={out}", f"--warmup={warmup}", f"--repeats={repeats}"]
    if profile_dir:
      cmd.append(f"--profile={profile_dir}")
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if os.path.exists(out):
      with open(out, encoding="utf-8") as f:
        return json.load(f)
  if rc in (-9, 137):  # SIGKILL: the kernel's out-of-memory killer, most likely
    return {**record, "status": "OOM", "error": "process killed (SIGKILL), host out of memory?"}
  return {**record, "status": "error", "error": f"benchmark subprocess exited with code {rc}"}


PRESETS = {
    "accelerator": dict(variants="megan,zsm", sizes="144x180,272x480", dtypes="float32,bfloat16",
                        infer_batch=1, batch=16, crop=32, warmup=2, repeats=10),
    "cpu_small": dict(variants="small,megan", sizes="32x32,64x64", dtypes="float32,bfloat16",
                      infer_batch=1, batch=2, crop=16, warmup=1, repeats=3),
}


def plan(args) -> list[Cell]:
  """The cells of a command line, in order: per variant, infer then train, per dtype and size."""
  from megan_jax.models import VARIANTS  # pylint: disable=import-outside-toplevel
  variants, dtypes = args.variants.split(","), args.dtypes.split(",")
  for name, values, allowed in (("--variants", variants, VARIANTS),
                                ("--dtypes", dtypes, ("float32", "bfloat16"))):
    if bad := [v for v in values if v not in allowed]:
      raise ValueError(f"{name}: unknown {bad}; expected some of {list(allowed)}")
  if args.crop % 4 or any(h % 4 or w % 4 for h, w in parse_sizes(args.sizes)):
    raise ValueError(f"--sizes={args.sizes} / --crop={args.crop}: LR sizes must be multiples of 4")
  modes = ["infer", "train"] if args.mode == "all" else [args.mode]
  overrides = tuple(parse_override(o) for o in args.override)
  cells = []
  for variant in variants:
    for mode in modes:
      for dtype in dtypes:
        if mode == "infer":
          cells += [Cell("infer", variant, dtype, size, args.infer_batch, overrides)
                    for size in parse_sizes(args.sizes)]
        else:
          cells.append(Cell("train", variant, dtype, (args.crop, args.crop), args.batch, overrides))
  return cells


def _mib(b) -> str:
  return f"{b / 2**20:.0f}" if b else "-"


def table(results: list[dict]) -> str:
  """A markdown table of the results."""
  head = ("| mode | variant | dtype | LR size | batch | ms | items/s | compile s | GFLOP | TFLOP/s "
          "| peak MiB |\n|---|---|---|---|---|---:|---:|---:|---:|---:|---:|")
  rows = []
  for r in results:
    cells = [r["mode"], r["variant"], r["dtype"], r["size"], str(r["batch"])]
    if r["status"] == "flops-only":
      cells += ["-", "-", "-", f"{r['flops'] / 1e9:.1f}", "-", "-"]
    elif r["status"] != "ok":
      cells += [r["status"]] + ["-"] * 5
    else:
      unit = "fps" if r["mode"] == "infer" else "clips/s"
      src = {"memory_stats": "", "memory_analysis": " (est.)"}.get(r["peak_source"], "")
      cells += [f"{r['ms']:.1f}", f"{r['items_per_s']:.2f} {unit}", f"{r['compile_s']:.1f}",
                f"{r['flops'] / 1e9:.1f}" if r["flops"] else "-",
                f"{r['tflops_per_s']:.3f}" if r["tflops_per_s"] else "-", _mib(r["peak_bytes"]) + src]
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join([head] + rows)


def parse_args(argv):
  """Flags; those not given take the values of the preset (--cpu-small, or the accelerator one)."""
  p = argparse.ArgumentParser(prog="python -m megan_jax.benchmark",
                              description=__doc__.split("\n\n", maxsplit=1)[0],
                              epilog=f"defaults (the accelerator preset): {PRESETS['accelerator']}")
  p.add_argument("--cpu-small", action="store_true", help=f"preset {PRESETS['cpu_small']}")
  p.add_argument("--variants", help="comma-separated model variants")
  p.add_argument("--mode", default="all", choices=["infer", "train", "all"])
  p.add_argument("--sizes", help="comma-separated LR frame sizes HxW for infer")
  p.add_argument("--dtypes", help="comma-separated compute dtypes")
  p.add_argument("--infer-batch", type=int, help="windows per inference call")
  p.add_argument("--batch", type=int, help="clips per training step")
  p.add_argument("--crop", type=int, help="LR crop size of a training clip")
  p.add_argument("--warmup", type=int, help="untimed calls after compilation")
  p.add_argument("--repeats", type=int, help="timed calls (the median is reported)")
  p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                 help="model config field for every cell (repeatable), e.g. attention_impl=cudnn")
  p.add_argument("--json", help="write the results here")
  p.add_argument("--profile", metavar="DIR",
                 help="jax.profiler trace of a few calls per cell, in DIR/<cell>; prints the top ops")
  p.add_argument("--flops-only", action="store_true",
                 help="only count FLOPs (lowers, never compiles or runs: any size works on a CPU)")
  p.add_argument("--time-budget", type=float, metavar="SECONDS",
                 help="start no cell that could end past SECONDS after the start (judged by the "
                      "longest cell so far); the cells left are recorded as 'skipped'")
  p.add_argument("--deadline", type=float, metavar="UNIX_SECONDS",
                 help="like --time-budget, but a wall-clock time (seconds since the epoch) that "
                      "several runs in one job can share")
  p.add_argument("--no-isolate", dest="isolate", action="store_false",
                 help="run every cell in this process (peak memory is then the executable's estimate)")
  p.add_argument("--cell", help=argparse.SUPPRESS)      # internal: one cell as JSON, for isolation
  p.add_argument("--cell-out", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  for key, value in PRESETS["cpu_small" if args.cpu_small else "accelerator"].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.repeats < 1 or args.warmup < 0:
    p.error("--repeats must be >= 1 and --warmup >= 0")
  return args


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.cell:  # a child of run_cell_isolated
    spec = json.loads(args.cell)
    cell = Cell(spec["mode"], spec["variant"], spec["dtype"], tuple(spec["size"]), spec["batch"],
                tuple(tuple(o) for o in spec["overrides"]))
    record = run_cell(cell, warmup=args.warmup, repeats=args.repeats, profile_dir=args.profile)
    with open(args.cell_out, "w", encoding="utf-8") as f:
      json.dump(record, f)
    return record
  try:
    cells = plan(args)
  except ValueError as e:
    sys.exit(f"megan_jax.benchmark: error: {e}")
  if "xla_backend_optimization_level=0" in os.environ.get("XLA_FLAGS", ""):
    print("[benchmark] warning: XLA_FLAGS lowers the optimisation level; timings are not "
          "representative", file=sys.stderr)
  load_before = os.getloadavg()[0]
  date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  start, longest = time.monotonic(), 0.0
  limits = []  # (seconds after `start`, the flag that set them)
  if args.time_budget is not None:
    limits.append((args.time_budget, f"--time-budget={args.time_budget:g}s"))
  if args.deadline is not None:
    limits.append((args.deadline - time.time(), f"--deadline={args.deadline:.0f}"))
  results = []

  def write_report(complete: bool) -> dict:
    ok = [r for r in results if r["status"] in ("ok", "flops-only")]
    report = {
        "command": "python -m megan_jax.benchmark " + shlex.join(argv),
        "date": date, "complete": complete,
        "jax_version": jax.__version__, "python": platform.python_version(),
        "host": platform.node(), "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "platform": ok[0]["platform"] if ok else None,
        "device_kind": ok[0]["device_kind"] if ok else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "warmup": args.warmup, "repeats": args.repeats, "results": results,
    }
    if args.json:  # rewritten after every cell: a run killed mid-way keeps the cells it finished
      tmp = args.json + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
      os.replace(tmp, args.json)
    return report

  for cell in cells:
    elapsed = time.monotonic() - start
    if over := [flag for limit, flag in limits if elapsed + longest > limit]:
      results.append({**_record(cell), "status": "skipped",
                      "error": f"{over[0]}: {elapsed:.0f}s spent and the longest cell so far "
                               f"took {longest:.0f}s"})
    elif args.flops_only:
      results.append(run_cell(cell, warmup=0, repeats=0, flops_only=True))
    elif args.isolate:
      results.append(run_cell_isolated(cell, warmup=args.warmup, repeats=args.repeats,
                                       profile_dir=args.profile))
    else:
      results.append(run_cell(cell, warmup=args.warmup, repeats=args.repeats,
                              profile_dir=args.profile, device_peak=False))
    longest = max(longest, time.monotonic() - start - elapsed)
    write_report(complete=False)
  report = write_report(complete=True)
  what = ("FLOPs only (lowered, not run)" if args.flops_only else
          f"median of {args.repeats} after {args.warmup} warm-up")
  device = f"{report['device_kind']} ({report['platform']})" if report["platform"] else "no cell ran"
  print(f"\n{device}, JAX {report['jax_version']}, {report['date']}, {what}\n")
  print(table(results))
  if any(r["status"] == "error" for r in results):
    sys.exit("megan_jax.benchmark: some cells failed (status 'error' above)")
  return report


if __name__ == "__main__":
  main()
