"""Run logs: a JSON-lines file, TensorBoard event files and a one-line progress report.

TensorBoard files are written with tensorboardX (protobuf only, no TensorFlow or PyTorch import),
because clu.metric_writers imports TensorFlow. Only process 0 writes; the other processes get a
writer whose methods do nothing, so callers need no `if jax.process_index() == 0`.
"""

import json
import math
import os
import time

import tensorboardX

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
  """Appends scalars to WORKDIR/metrics.jsonl and WORKDIR/tensorboard/events.out.tfevents.*.

  `resume_step`: the step the run restarts from (its checkpoint's). A run killed after that step
  logged steps that the resumed run logs again, so the records past it are dropped from
  metrics.jsonl, and TensorBoard is told to hide its events past it (tensorboardX `purge_step`):
  the logs hold each step once.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, JSONL_NAME)
    if resume_step is not None and os.path.exists(path):
      _truncate_jsonl(path, resume_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tb = tensorboardX.SummaryWriter(
        os.path.join(workdir, TENSORBOARD_DIR),
        purge_step=None if resume_step is None else resume_step + 1)

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    """One JSON line {"step", "time", **scalars} and one TensorBoard scalar per key."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, global_step=int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _truncate_jsonl(path: str, last_step: int) -> None:
  """Keeps the records of steps <= `last_step` (and drops a line cut short by a kill)."""
  kept = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if record.get("step", 0) <= last_step:
        kept.append(line if line.endswith("\n") else line + "\n")
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def read_jsonl(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, in order (empty when there is none)."""
  path = os.path.join(workdir, JSONL_NAME)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Throughput and ETA between consecutive log steps (the first interval includes compilation)."""

  def __init__(self, start_step: int, num_steps: int, batch_size: int):
    self.num_steps, self.batch_size = num_steps, batch_size
    self._step, self._time = start_step, time.perf_counter()

  def update(self, step: int) -> dict[str, float]:
    """Returns {"steps_per_sec", "clips_per_sec", "eta_sec"} since the previous call."""
    now = time.perf_counter()
    rate = (step - self._step) / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return {"steps_per_sec": rate, "clips_per_sec": rate * self.batch_size,
            "eta_sec": (self.num_steps - step) / rate if rate > 0 else math.inf}

  def line(self, step: int, loss: float, lr: float, speed: dict[str, float]) -> str:
    return (f"step {step}/{self.num_steps} | loss {loss:.5f} | lr {lr:.3g} | "
            f"{speed['steps_per_sec']:.2f} steps/s | {speed['clips_per_sec']:.1f} clips/s | "
            f"ETA {format_duration(speed['eta_sec'])}")
