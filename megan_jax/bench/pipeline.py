"""Throughput of the Vimeo-90K training pipeline (samples/s), and its per-stage costs.

    python -m megan_jax.bench.pipeline --root /path/to/vimeo_septuplet --workers 0 1 2

The pipeline is configured as `configs/vimeo.py` (`--config`) configures a training run's
(`config.data`: crop, frames, augmentation), with the root, list, workers and read threads of the
command line. Prints a markdown table for docs/BENCHMARKS.md. The clips are read repeatedly (the
pipeline repeats forever), so after the first pass they come from the page cache. A small
list is tiled (`--tile`) to a realistic length: grain's index shuffle costs milliseconds
per record on an 8-record list but microseconds on a 64k one.
"""

import argparse
import datetime
import os
import platform
import tempfile
import time

import numpy as np

from megan_jax.bench.programs import DEFAULT_CONFIG, load_config
from megan_jax.data.augment import downscale, random_augment, random_crop
from megan_jax.data.pipeline import SCALE, make_train_iter
from megan_jax.data.vimeo import INPUT_FRAMES, VimeoSeptuplet, read_frames, read_list


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def _ms(fn, repeats: int) -> float:
  """Median milliseconds of fn() over `repeats` calls."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def stage_costs(data: VimeoSeptuplet, crop: int, repeats: int) -> dict:
  """Median ms per sample of each stage, in this process (one core)."""
  rng = np.random.default_rng(0)
  gt = read_frames(data.frame_paths(0))  # (7, H, W, 3)
  lr_patch, gt_patch = random_crop(gt, crop, SCALE, rng)
  return {
      "decode 7 PNG frames": _ms(lambda: read_frames(data.frame_paths(0)), repeats),
      "bicubic x1/4 of the 4 full input frames (reference, not used)": _ms(
          lambda: downscale(gt[list(INPUT_FRAMES)], SCALE), repeats),
      "random crop + bicubic x1/4 of the crop with margin (used)": _ms(
          lambda: random_crop(gt, crop, SCALE, rng), repeats),
      "augment (flips, rotation, reversal)": _ms(
          lambda: random_augment(lr_patch, gt_patch, rng), repeats),
  }


def throughput(cfg, workers: int, batch_size: int, batches: int, warmup: int) -> tuple:
  """(seconds to the first batch, samples/s after `warmup` batches)."""
  start = time.perf_counter()
  it = make_train_iter(cfg, batch_size=batch_size, seed=0, shard_index=0, shard_count=1,
                       workers=workers)
  next(it)
  first = time.perf_counter() - start
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * batch_size / (time.perf_counter() - start)
  it.close()
  return first, rate


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", required=True, help="Vimeo-90K septuplet root")
  parser.add_argument("--list-file", default="sep_trainlist.txt")
  parser.add_argument("--tile", type=int, default=1000,
                      help="repeat the list this many times (for short lists)")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--read-threads", type=int, default=1)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--batches", type=int, default=25)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--config", default=DEFAULT_CONFIG,
                      help="the training config whose `data` the pipeline runs (default: %(default)s)")
  parser.add_argument("--crop", type=int, help="LR crop (default: the config's data.crop)")
  parser.add_argument("--repeats", type=int, default=20, help="stage timing repeats")
  args = parser.parse_args()

  clips = read_list(args.list_file, args.root)
  with tempfile.TemporaryDirectory() as tmp:
    list_file = os.path.join(tmp, "tiled_list.txt")
    with open(list_file, "w", encoding="utf-8") as f:
      f.write("\n".join(clips * args.tile))
    report(args, clips, list_file)


def report(args, clips: list, list_file: str) -> None:
  cfg = load_config(args.config, "megan").data
  cfg.update(root=args.root, list_file=list_file, read_threads=args.read_threads,
             crop=args.crop or cfg.crop)
  data = VimeoSeptuplet(args.root, list_file)
  h, w = read_frames(data.frame_paths(0)).shape[1:3]
  print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
  print(f"machine: {os.cpu_count()} CPUs ({_cpu_model()}), {platform.platform()}")
  print(f"data: {args.root}, {len(clips)} clips of {args.list_file} tiled to {len(data)}, "
        f"frames {w}x{h}")
  print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')} in this "
        "process (worker processes get 1 unless set)")
  print(f"load average before: {os.getloadavg()}")
  print("\n| stage (one core) | ms / sample |\n|---|---|")
  for name, ms in stage_costs(data, cfg.crop, args.repeats).items():
    print(f"| {name} | {ms:.1f} |")
  print("\n| workers | read threads | batch | first batch (s) | samples/s |\n|---|---|---|---|---|")
  for workers in args.workers:
    first, rate = throughput(cfg, workers, args.batch_size, args.batches, args.warmup)
    print(f"| {workers} | {args.read_threads} | {args.batch_size} | {first:.1f} | {rate:.1f} |",
          flush=True)
  print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
  main()
