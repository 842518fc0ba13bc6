"""Run logs: a JSON-lines file, TensorBoard event files, the startup summary and closing lines.

TensorBoard files are written with tensorboardX (protobuf only, no TensorFlow or PyTorch import),
because clu.metric_writers imports TensorFlow. Only process 0 writes; the other processes get a
writer whose methods do nothing, so callers need no `if jax.process_index() == 0`.

A log is never discarded: a run that starts from step 0 in a workdir holding the logs of an
earlier run (whose checkpoints were deleted) moves them to WORKDIR/earlier_run (.1, .2, ...) first,
and a resume moves the records of the steps it trains again to WORKDIR/metrics.replayed.jsonl.
"""

import json
import os
import shutil
import time

import jax
import numpy as np
import tensorboardX
from clu import parameter_overview

from megan_jax import checkpointing, progress, run_config

JSONL_NAME = "metrics.jsonl"
REPLAYED_NAME = "metrics.replayed.jsonl"
TENSORBOARD_DIR = "tensorboard"
PARAMETERS_NAME = "parameters.txt"
MANIFEST_NAME = "manifest.json"  # what each start ran on (megan_jax/repro.py)
EARLIER_RUN_DIR = "earlier_run"


class MetricWriter:
  """Appends scalars to WORKDIR/metrics.jsonl and WORKDIR/tensorboard/events.out.tfevents.*.

  `resume_step`: the step the run restarts from (its checkpoint's). A run killed after that step
  logged steps that the resumed run logs again, so the records past it are moved from
  metrics.jsonl to metrics.replayed.jsonl, and TensorBoard is told to hide its events past it
  (tensorboardX `purge_step`): the logs hold each step once.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, JSONL_NAME)
    if resume_step is not None and os.path.exists(path):
      replayed = os.path.join(workdir, REPLAYED_NAME)
      if steps := _truncate_jsonl(path, resume_step, replayed):
        progress.note(f"{path}: steps {steps[0]}-{steps[-1]} were logged past the checkpoint of "
                      f"step {resume_step} and are trained again; moved their records to "
                      f"{replayed}")
    self._jsonl = open(path, "a", encoding="utf-8")
    self._last = None  # (step, offset, record) of the last line written
    self._tb = tensorboardX.SummaryWriter(
        os.path.join(workdir, TENSORBOARD_DIR),
        purge_step=None if resume_step is None else resume_step + 1)

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    """One JSON line {"step", "time", **scalars} and one TensorBoard scalar per key."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._write_line(int(step), self._jsonl.tell(), {"step": int(step), "time": time.time(),
                                                     **scalars})
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, global_step=int(step))
    self._tb.flush()

  def write_fields(self, step: int, fields: dict) -> None:
    """Adds JSON `fields` (strings, dicts: not TensorBoard scalars) to metrics.jsonl's record of
    `step`: merged into the last line when that is `step`'s record, else a line of its own."""
    if not self.enabled:
      return
    if self._last is not None and self._last[0] == int(step):
      _, offset, record = self._last
      self._jsonl.seek(offset)
      self._jsonl.truncate()
    else:
      offset, record = self._jsonl.tell(), {"step": int(step), "time": time.time()}
    self._write_line(int(step), offset, {**record, **fields})

  def _write_line(self, step: int, offset: int, record: dict) -> None:
    self._last = (step, offset, record)
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def write_image(self, step: int, tag: str, image) -> None:
    """One TensorBoard image, uint8 (H, W, 3)."""
    if self.enabled:
      self._tb.add_image(tag, image, global_step=int(step), dataformats="HWC")
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _truncate_jsonl(path: str, last_step: int, moved_to: str) -> list[int]:
  """Keeps the records of steps <= `last_step` in `path`, appends the later ones to `moved_to`
  (a line cut short by a kill is dropped); returns the moved records' steps."""
  kept, moved = [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      line = line if line.endswith("\n") else line + "\n"
      (kept if record.get("step", 0) <= last_step else moved).append((record.get("step", 0), line))
  if moved:  # first: a kill in between loses nothing
    with open(moved_to, "a", encoding="utf-8") as f:
      f.writelines(line for _, line in moved)
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(line for _, line in kept)
  os.replace(tmp, path)
  return [step for step, _ in moved]


def set_aside_earlier_run(workdir: str) -> str | None:
  """Moves the logs and configs of an earlier run (metrics.jsonl with records, TensorBoard events,
  config*.json, parameters.txt) to a free WORKDIR/earlier_run*; returns a note, or None when there
  is no such log. Called by a run starting at step 0, which would otherwise truncate them."""
  records = read_jsonl(workdir, strict=False)
  if not records:
    return None
  names = [JSONL_NAME, REPLAYED_NAME, TENSORBOARD_DIR, PARAMETERS_NAME] + [
      os.path.basename(p) for p in run_config.config_paths(workdir)]
  names = [n for n in names if os.path.exists(os.path.join(workdir, n))]
  dest = checkpointing.free_name(os.path.join(os.path.abspath(workdir), EARLIER_RUN_DIR))
  os.makedirs(dest)
  for name in names:
    shutil.move(os.path.join(workdir, name), os.path.join(dest, name))
  steps = [r.get("step", 0) for r in records]
  return (f"{os.path.join(workdir, JSONL_NAME)} logs steps {min(steps)}-{max(steps)} of an earlier "
          f"run, but {checkpointing.checkpoint_dir(workdir)} holds no checkpoint of it: moved "
          f"{', '.join(names)} to {dest}; this run starts from step 0")


def read_jsonl(workdir: str, strict: bool = True) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, in order (empty when there is none)."""
  path = os.path.join(workdir, JSONL_NAME)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        if strict:
          raise
  return records


def run_summary(params, workdir: str, config) -> str:
  """The startup summary: parameters per top-level module, devices, batch and workdir.

  Writes the full parameter table (clu's parameter overview) to WORKDIR/parameters.txt.
  """
  path = os.path.join(os.path.abspath(workdir), PARAMETERS_NAME)
  with open(path, "w", encoding="utf-8") as f:
    f.write(parameter_overview.get_parameter_overview(params, include_stats=False) + "\n")
  counts = {name: sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(sub))
            for name, sub in params.items()}
  devices = jax.devices()
  kinds = ", ".join(sorted({d.device_kind for d in devices}))
  n_in, crop = config.data.num_input_frames, config.data.crop
  return "\n".join([
      f"workdir {os.path.abspath(workdir)}",
      f"model {config.model.get('name', '')}: {sum(counts.values()):,} parameters (" +
      ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f"); full table in {path}",
      f"{_count(len(devices), 'device')} ({kinds}), {_count(jax.process_count(), 'process')}; "
      f"global batch "
      f"{config.batch_size} of {n_in}x{crop}x{crop} LR clips "
      f"({config.batch_size // len(devices)} per device)"])


def _count(n: int, noun: str) -> str:
  return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def written(workdir: str, steps) -> list[tuple[str, str]]:
  """What a training run leaves in `workdir`, as [(path, what)] for `report.wrote_lines`."""
  steps = list(steps)
  return [(checkpointing.checkpoint_dir(workdir),
           f"checkpoint{'s' if len(steps) > 1 else ''} of step{'s' if len(steps) > 1 else ''} "
           f"{', '.join(map(str, steps))}"),
          (os.path.join(workdir, JSONL_NAME), "training log, one JSON record per logged step"),
          (os.path.join(workdir, TENSORBOARD_DIR), "the same log as TensorBoard events"),
          *[(path, "log records of steps that a resume trained again")
            for path in [os.path.join(workdir, REPLAYED_NAME)] if os.path.exists(path)],
          *[(path, "the config of the run" if i == 0 else "the config of a resume that changed it")
            for i, path in enumerate(run_config.config_paths(workdir))],
          (os.path.join(workdir, PARAMETERS_NAME), "the parameter table"),
          *[(path, "what each start ran on: versions, devices, flags, commit (docs/GUARANTEES.md)")
            for path in [os.path.join(workdir, MANIFEST_NAME)] if os.path.exists(path)]] + [
              (os.path.join(workdir, name), "the logs of an earlier run whose checkpoints are gone")
              for name in sorted(os.listdir(workdir)) if name.startswith(EARLIER_RUN_DIR)]
