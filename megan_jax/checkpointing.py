"""Checkpoints: train state and grain iterator position saved together with orbax.

Layout: WORKDIR/checkpoints/<step>/{state, data}. `state` is the whole train state (parameters,
optimiser state, step) as an orbax `StandardSave` pytree; `data` is the grain iterator state, one
small JSON file per process (grain's own orbax handler), so that a resumed run reads exactly the
batches an uninterrupted run would have read.

A params-only checkpoint (`save_params`: `state` holds only {"params": ...}, no `data`) is the
start of a run from given weights: a converted official model (`megan_jax.convert`) or a packaged
pretrained one. It is always step 0. Evaluation and inference restore its parameters like those of
any checkpoint; training (`train.train_and_evaluate`) starts from them with a fresh optimiser state,
step 0 and the data order of `config.seed`, exactly as a run from a random initialisation would,
and its own checkpoints (steps 1, 2, ...) then supersede it.

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


def has_checkpoints(workdir: str) -> bool:
  """True when `workdir` holds at least one finished checkpoint."""
  directory = checkpoint_dir(workdir)
  return os.path.isdir(directory) and any(e.isdigit() for e in os.listdir(directory))


def save_params(workdir: str, params: Any) -> str:
  """Writes `params` as the params-only checkpoint (step 0) of a new run in `workdir`; returns its
  directory. Refuses a workdir that already holds checkpoints (it would mix two runs)."""
  manager = make_manager(workdir, async_save=False)
  try:
    if manager.all_steps():
      raise ValueError(f"workdir {workdir!r} already holds checkpoints (steps "
                       f"{list(manager.all_steps())}); choose a new --workdir")
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})),
                 force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  return os.path.join(checkpoint_dir(workdir), "0")


def is_params_only(manager: ocp.CheckpointManager, step: int) -> bool:
  """True for a checkpoint written by `save_params` (no optimiser state, no data position)."""
  return "opt_state" not in manager.item_metadata(step)["state"].tree


def restore_start_params(manager: ocp.CheckpointManager, abstract_params: Any, step: int) -> Any:
  """The parameters of params-only checkpoint `step`, with the shardings of `abstract_params`;
  a ValueError names the parameters whose shapes differ from the model's."""
  stored = manager.item_metadata(step)["state"].tree["params"]
  shapes = lambda tree: {jax.tree_util.keystr(p): tuple(v.shape)
                         for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  want, got = shapes(abstract_params), shapes(stored)
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()))[:5]
    raise ValueError(
        f"{manager.directory}/{step}: its parameters do not fit config.model "
        f"(use the model config they were made for); first differences (path, shape): {diff}")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore({"params": abstract_params})))
  return restored["state"]["params"]


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
