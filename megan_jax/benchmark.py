r"""Speed, memory and FLOPs of MEGAN inference and training (results in docs/BENCHMARKS.md).

    python -m megan_jax.benchmark --json=bench.json              # accelerator table: megan + zsm
    python -m megan_jax.benchmark --cpu-small --json=cpu.json    # small sizes for a CPU
    python -m megan_jax.benchmark --variants=megan --mode=infer --sizes=144x180 \
        --dtypes=bfloat16 --repeats=20 --profile=/tmp/trace      # one cell, with a profiler trace

A cell is one (mode, variant, dtype, size, batch); the rest of the run (model, frames, optimiser,
loss) is the variant's training config, `configs/vimeo.py:<variant>` (`megan_jax.bench.programs`).
The batch and the training crop default to that config's too (batch_size, data.crop, and
eval.batch_size for infer). Each cell is compiled, warmed up and timed (`megan_jax.bench.measure`):
median ms, items/s (output frames for infer, clips for train), compile time, FLOPs of the
loop-free twin, TFLOP/s, the ratio of that TFLOP/s to a plain 3x3 conv of the model's width on the
same frames, the two timed in alternation for at least 5 pairs ("vs 3x3 conv": the median of the
pairs' ratios, with their range; `programs.ceiling_program`) and peak memory. --flops-only only
lowers: it counts the FLOPs of accelerator-sized cells on a CPU.

Each cell runs in a fresh subprocess (the device's peak memory is then the cell's) unless
--no-isolate. A cell's figures are printed as it finishes; --json=FILE is rewritten after every
cell ("complete": false until the last). SIGTERM, SIGHUP or SIGINT (Ctrl-C) stops the whole run,
the cell subprocess included (`stop_signals.stop_on_signals`), writes the JSON of the finished
cells and exits with 128 + the signal number.
--time-budget=SECONDS starts no cell that could end past the budget (judged by the longest cell so
far in this run) and records the rest as "skipped"; --deadline=UNIX_SECONDS does the same against a
wall-clock time, so several runs chained in one job share one limit:
`END=$(( $(date +%s) + 480 ))`, then `--deadline=$END` on each.

--profile=DIR writes a `jax.profiler` trace of 3 more calls of each cell to DIR/<cell> and prints
the ops with the most self time into "profile_top_ops" (`megan_jax.bench.profile`).
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import sys
import time

import jax

from megan_jax import report, stop_signals
from megan_jax.bench import measure, programs
from megan_jax.bench.programs import Cell
from megan_jax.models import VARIANTS

PRESETS = {
    "accelerator": dict(variants="megan,zsm", sizes="144x180,272x480", dtypes="float32,bfloat16",
                        warmup=2, repeats=10),
    "cpu_small": dict(variants="small,megan", sizes="32x32,64x64", dtypes="float32,bfloat16",
                      batch=2, crop=16, warmup=1, repeats=3),
}


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


def plan(args) -> list[Cell]:
  """The cells of a command line, in order: per variant, infer then train, per dtype and size.

  Batch sizes and the training crop not given on the command line are the variant config's.
  """
  variants, dtypes = args.variants.split(","), args.dtypes.split(",")
  for name, values, allowed in (("--variants", variants, VARIANTS),
                                ("--dtypes", dtypes, ("float32", "bfloat16"))):
    if bad := [v for v in values if v not in allowed]:
      raise ValueError(f"{name}: unknown {bad}; expected some of {list(allowed)}")
  sizes = parse_sizes(args.sizes)
  modes = ["infer", "train"] if args.mode == "all" else [args.mode]
  overrides = tuple(parse_override(o) for o in args.override)
  cells = []
  for variant in variants:
    config = programs.load_config(args.config, variant)
    crop = args.crop or config.data.crop
    if crop % 4 or any(h % 4 or w % 4 for h, w in sizes):
      raise ValueError(f"--sizes={args.sizes} / crop {crop}: LR sizes must be multiples of 4")
    cell = lambda mode, dtype, size, batch: Cell(mode, variant, dtype, size, batch, overrides,
                                                 os.path.abspath(args.config))
    for mode in modes:
      for dtype in dtypes:
        if mode == "infer":
          cells += [cell("infer", dtype, size, args.infer_batch or config.eval.batch_size)
                    for size in sizes]
        else:
          cells.append(cell("train", dtype, (crop, crop), args.batch or config.batch_size))
  return cells


def _figures(r: dict) -> list[str]:
  """ms, items/s, compile s, GFLOP, TFLOP/s, vs 3x3 conv and peak MiB of a result, as printed."""
  if r["status"] == "flops-only":
    return ["-", "-", "-", f"{r['flops'] / 1e9:.1f}", "-", "-", "-"]
  if r["status"] != "ok":
    return [r["status"]] + ["-"] * 6
  unit = "fps" if r["mode"] == "infer" else "clips/s"
  src = {"memory_stats": "", "memory_analysis": " (est.)"}.get(r["peak_source"], "")
  return [f"{r['ms']:.1f}", f"{r['items_per_s']:.2f} {unit}", f"{r['compile_s']:.1f}",
          f"{r['flops'] / 1e9:.1f}" if r["flops"] else "-",
          f"{r['tflops_per_s']:.3f}" if r["tflops_per_s"] else "-",
          f"{r['vs_conv3x3']:.2f}" if r.get("vs_conv3x3") else "-",
          (f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] else "-") + src]


def cell_line(r: dict) -> str:
  """One line of a finished cell's figures (printed as it finishes)."""
  if r["status"] == "flops-only":
    return f"[benchmark] {r['name']}: {_figures(r)[3]} GFLOP (FLOPs only)"
  if r["status"] != "ok":
    return f"[benchmark] {r['name']}: {r['status']} {r.get('error', '')}".rstrip()
  ms, rate, compile_s, gflop, tflops, vs_conv, peak = _figures(r)
  conv = (f" ({vs_conv} x the {r['conv3x3']['tflops_per_s']:.3f} TFLOP/s of a 3x3 conv of its "
          f"width; {len(r['conv3x3']['times_ms'])} alternating pairs ranged "
          f"{r['vs_conv3x3_range'][0]:.2f}-{r['vs_conv3x3_range'][1]:.2f})"
          if r.get("vs_conv3x3") else "")
  return (f"[benchmark] {r['name']}: {ms} ms, {rate}, compile {compile_s} s, {gflop} GFLOP, "
          f"{tflops} TFLOP/s{conv}, peak {peak} MiB")


def table(results: list[dict]) -> str:
  """A markdown table of the results."""
  head = ("| mode | variant | dtype | LR size | batch | ms | items/s | compile s | GFLOP | TFLOP/s "
          "| vs 3x3 conv | peak MiB |\n|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
  rows = ["| " + " | ".join([r["mode"], r["variant"], r["dtype"], r["size"], str(r["batch"])]
                            + _figures(r)) + " |" for r in results]
  return "\n".join([head] + rows)


def parse_args(argv):
  """Flags; those not given take the values of the preset (--cpu-small, or the accelerator one)."""
  p = argparse.ArgumentParser(prog="python -m megan_jax.benchmark",
                              description=__doc__.split("\n\n", maxsplit=1)[0],
                              epilog=f"defaults (the accelerator preset): {PRESETS['accelerator']}")
  p.add_argument("--cpu-small", action="store_true", help=f"preset {PRESETS['cpu_small']}")
  p.add_argument("--config", default=programs.DEFAULT_CONFIG,
                 help="the config file whose get_config(variant) each cell runs (default: %(default)s)")
  p.add_argument("--variants", help="comma-separated model variants (arguments of --config)")
  p.add_argument("--mode", default="all", choices=["infer", "train", "all"])
  p.add_argument("--sizes", help="comma-separated LR frame sizes HxW for infer")
  p.add_argument("--dtypes", help="comma-separated compute dtypes")
  p.add_argument("--infer-batch", type=int, help="windows per inference call (default: the "
                 "config's eval.batch_size)")
  p.add_argument("--batch", type=int, help="clips per training step (default: the config's batch_size)")
  p.add_argument("--crop", type=int, help="LR crop size of a training clip (default: data.crop)")
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


def _run_child(args) -> dict:
  """The cell of `--cell` (a child of `measure.run_cell_isolated`), written to --cell-out."""
  spec = json.loads(args.cell)
  cell = Cell(spec["mode"], spec["variant"], spec["dtype"], tuple(spec["size"]), spec["batch"],
              tuple(tuple(o) for o in spec["overrides"]), spec["config"])
  result = measure.run_cell(cell, programs.PROGRAMS[cell.mode], warmup=args.warmup,
                            repeats=args.repeats, profile_dir=args.profile,
                            make_ceiling=programs.PROGRAMS["ceiling"])
  report.write_json(args.cell_out, result)
  return result


def main(argv=None, make_programs=None) -> dict:
  """Runs the benchmark of a command line; `make_programs` ({mode: cell -> Program}, default
  `programs.PROGRAMS`) builds what the cells of this process time."""
  argv = sys.argv[1:] if argv is None else argv
  make_programs = make_programs or programs.PROGRAMS
  args = parse_args(argv)
  if args.cell:
    return _run_child(args)
  try:
    cells = plan(args)
  except (ValueError, OSError) as e:
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

  def write_report(complete: bool, stopped_by: str | None = None) -> dict:
    ok = [r for r in results if r["status"] in ("ok", "flops-only")]
    summary = {
        "command": "python -m megan_jax.benchmark " + shlex.join(argv),
        "date": date, "complete": complete, "stopped_by": stopped_by,
        "jax_version": jax.__version__, "python": platform.python_version(),
        "host": platform.node(), "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "platform": ok[0]["platform"] if ok else None,
        "device_kind": ok[0]["device_kind"] if ok else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "warmup": args.warmup, "repeats": args.repeats, "results": results,
    }
    if args.json:  # rewritten after every cell: a run stopped mid-way keeps the cells it finished
      report.write_json(args.json, summary)
    return summary

  try:
    with stop_signals.stop_on_signals("the benchmark"):
      for cell in cells:
        elapsed = time.monotonic() - start
        if over := [flag for limit, flag in limits if elapsed + longest > limit]:
          result = {**measure.record(cell), "status": "skipped",
                    "error": f"{over[0]}: {elapsed:.0f}s spent and the longest cell so far "
                             f"took {longest:.0f}s"}
        elif args.flops_only:
          result = measure.run_cell(cell, make_programs[cell.mode], warmup=0, repeats=0,
                                    flops_only=True)
        elif args.isolate:
          result = measure.run_cell_isolated(cell, warmup=args.warmup, repeats=args.repeats,
                                             profile_dir=args.profile)
        else:
          result = measure.run_cell(cell, make_programs[cell.mode], warmup=args.warmup,
                                    repeats=args.repeats, profile_dir=args.profile,
                                    device_peak=False, make_ceiling=make_programs.get("ceiling"))
        results.append(result)
        print(cell_line(result), flush=True)
        longest = max(longest, time.monotonic() - start - elapsed)
        write_report(complete=False)
  except (stop_signals.Interrupted, KeyboardInterrupt) as e:
    signum = e.exit_code - 128 if isinstance(e, stop_signals.Interrupted) else signal.SIGINT
    name = signal.Signals(signum).name
    write_report(complete=False, stopped_by=name)
    print(f"\nstopped by {name} after {len(results)} of {len(cells)} cells\n\n{table(results)}")
    wrote = f"; wrote the finished cells to {args.json}" if args.json else ""
    print(f"megan_jax.benchmark: stopped by {name}{wrote}", file=sys.stderr)
    sys.exit(128 + signum)
  summary = write_report(complete=True)
  what = ("FLOPs only (lowered, not run)" if args.flops_only else
          f"median of {args.repeats} after {args.warmup} warm-up")
  device = (f"{summary['device_kind']} ({summary['platform']})" if summary["platform"]
            else "no cell ran")
  print(f"\n{device}, JAX {summary['jax_version']}, {summary['date']}, {what}\n")
  print(table(results))
  if args.json:
    print(f"\nwrote {args.json}")
  if any(r["status"] == "error" for r in results):
    sys.exit("megan_jax.benchmark: some cells failed (status 'error' above)")
  return summary


if __name__ == "__main__":
  main()
