"""Checkpoints: train state and grain iterator position saved together with orbax.

Layout: WORKDIR/checkpoints/<step>/{state, data}. `state` is the whole train state (parameters,
optimiser state, step) as an orbax `StandardSave` pytree; `data` is the grain iterator state, one
small JSON file per process (grain's own orbax handler), so that a resumed run reads exactly the
batches an uninterrupted run would have read.

Retention is one `CheckpointManager` with one preservation policy: the last `keep` checkpoints
plus the single best one by validation PSNR-Y (`AnyPreservationPolicy(LatestN, BestN)`); checkpoints
saved without a validation score count only for "last `keep`". Saves are atomic (orbax writes to a
temporary directory and renames it when complete) and, by default, asynchronous: `save` returns once
the arrays are copied off the device.
"""

import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

BEST_METRIC = "val_psnr_y"


class _NoMetricsFilter(logging.Filter):
  """Drops orbax's warning for saves without a validation score: expected between validations."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMetricsFilter())


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _best_fn(metrics: dict[str, float]) -> float:
  return metrics[BEST_METRIC]


def make_manager(workdir: str, *, keep: int = 3, async_save: bool = True,
                 create: bool = True) -> ocp.CheckpointManager:
  """Returns the run's CheckpointManager (keeps the last `keep` and the best by `val_psnr_y`)."""
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(n=keep),
      pp.BestN(get_metric_fn=_best_fn, n=1, keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=_best_fn, best_mode="max", preservation_policy=policy,
      enable_async_checkpointing=async_save, create=create, cleanup_tmp_directories=create)
  handlers = {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any,
         metrics: dict[str, float] | None = None) -> None:
  """Saves `state` and the grain iterator position after `step` training steps."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter)),
      metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any,
            step: int | None = None) -> Any:
  """Restores the state (with the shardings of `abstract_state`) and rewinds `data_iter` in place."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iter)))
  return restored["state"]


def _existing_manager(workdir: str) -> ocp.CheckpointManager:
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"no checkpoint in workdir {workdir!r}: {directory} does not exist; train first with "
        f"--mode=train --workdir={workdir}")
  manager = make_manager(workdir, create=False)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in workdir {workdir!r}: {directory} is empty")
  return manager


def best_step(workdir: str) -> int:
  """Step of the checkpoint with the highest validation PSNR-Y (the latest if none was scored)."""
  return _existing_manager(workdir).best_step()


def restore_params(workdir: str, step: int | None = None) -> tuple[Any, int]:
  """Returns (params, step) of checkpoint `step` in `workdir` (the latest when None) on one local device."""
  manager = _existing_manager(workdir)
  step = manager.latest_step() if step is None else step
  if step not in manager.all_steps():
    raise FileNotFoundError(
        f"no checkpoint for step {step} in workdir {workdir!r}; available: {list(manager.all_steps())}")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  tree = manager.item_metadata(step)["state"].tree
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return restored["state"]["params"], step
