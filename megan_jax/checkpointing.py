"""Checkpoints: train state and grain iterator position saved together with orbax.

Layout: WORKDIR/checkpoints/<step>/{state, data}. `state` is the whole train state (parameters,
optimiser state, step) as an orbax `StandardSave` pytree; `data` is the grain iterator state, one
small JSON file per process (grain's own orbax handler). Training does not restore `data`: the
global batch of a step is a function of the data seed and the step (`data.pipeline`), so a
resumed run starts its iterator at the restored step and reads exactly the batches an
uninterrupted run would have read, on any number of processes and devices; the state is
resharded onto the new mesh by orbax (`abstract_state`'s shardings).

A params-only checkpoint (`save_params`: `state` holds only {"params": ...}, no `data`) is the
start of a run from given weights: a converted official model (`megan_jax.convert`) or a packaged
pretrained one. It is always step 0. Evaluation and inference restore its parameters like those of
any checkpoint; training (`train.train_and_evaluate`) starts from them with a fresh optimiser state,
step 0 and the data order of `config.seed`, exactly as a run from a random initialisation would,
and its own checkpoints (steps 1, 2, ...) then supersede it.

Retention is one `CheckpointManager` with one preservation policy: the last `keep` checkpoints
plus the single best one by validation PSNR-Y (`AnyPreservationPolicy(LatestN, BestN)`); checkpoints
saved without a validation score count only for "last `keep`", and the newest checkpoint is always
kept (`keep` below 1 counts as 1). Saves are atomic (orbax writes to a temporary directory and
renames it when complete) and, by default, asynchronous: `save` returns once the arrays are copied
off the device.

Faults end in one line that says what is intact: a save that fails (disk full, folder turned
read-only) raises `CheckpointError` naming the checkpoints still on disk, never deletes them, and
never waits on orbax's 300 s timeout (the folder is checked before each save); orbax's own reports
of it stay off the screen (`orbax_noise`). An unreadable checkpoint (truncated, half-deleted) is
skipped with a warning naming its step, in favour of the newest readable one; a checkpoint of
another architecture raises a ValueError naming the workdir and the parameters whose shapes differ.

Each save stores the fingerprints of what it saved (`fingerprint.state_fingerprints`: hashes of
the exact bytes of the parameters and optimiser state, and the data fingerprint: in training,
`fingerprint.DataPrint` over every example read so far, which a resume continues) in the
step's orbax custom metadata (`CheckpointManager.save(..., custom_metadata=...)`, read back by
`CheckpointManager.metadata(step).custom_metadata`; orbax 0.12's "metadata varying by step",
https://orbax.readthedocs.io/en/stable/api_reference/checkpoint.checkpoint_manager.html). A
restore recomputes them: a checkpoint whose bytes changed on disk (a flipped bit that the file
format does not notice) or that holds NaN/Inf counts as unreadable and is skipped like a truncated
one. Checkpoints saved before fingerprints existed are checked for NaN/Inf only.
"""

import os
import time
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from megan_jax import fingerprint, orbax_noise, paths, run_config, workdir_lock

BEST_METRIC = "val_psnr_y"
FINGERPRINTS = "fingerprints"  # the key of the fingerprints in a step's custom metadata
DELETED = "deleted while it was read"
UNREADABLE_DIR = "unreadable_checkpoints"  # in the workdir: where resuming moves unreadable ones
_REASONS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
            "Permission denied")


class CheckpointError(RuntimeError):
  """A checkpoint could not be saved, or none could be read; the message says what is intact."""


class ArchitectureError(ValueError):
  """The checkpoint's parameters have other names or shapes than the configured model's."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _best_fn(metrics: dict[str, float]) -> float:
  return metrics[BEST_METRIC]


def make_manager(workdir: str, *, keep: int = 3, async_save: bool = True,
                 create: bool = True, this_process_only: bool = False) -> ocp.CheckpointManager:
  """Returns the run's CheckpointManager (keeps the last `keep` and the best by `val_psnr_y`).

  this_process_only: a reader used by one process of a multi-process job alone (evaluation and
  inference, `multiprocess.on_process_0`): it waits for no other process."""
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(n=max(keep, 1)),  # 0 would delete each checkpoint as it is saved
      pp.BestN(get_metric_fn=_best_fn, n=1, keep_checkpoints_without_metrics=False),
  ])
  alone = {}
  if this_process_only and jax.process_count() > 1:
    index = jax.process_index()
    alone["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
        primary_host=index, active_processes={index},
        barrier_sync_key_prefix=f"megan_jax_reader_{index}")
  options = ocp.CheckpointManagerOptions(
      best_fn=_best_fn, best_mode="max", preservation_policy=policy,
      enable_async_checkpointing=async_save, create=create, cleanup_tmp_directories=create,
      **alone)
  handlers = {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def saved_steps(directory: str) -> list[int]:
  """The steps of the complete checkpoints in `directory` (orbax renames a save's folder to its
  step number only once the save has finished)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _reason(exc: BaseException) -> str:
  """The system's reason for a failed save or restore, in a few words: the root cause's first line."""
  chain = [exc]
  while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
    chain.append(nxt)
  text = " ".join(str(e) for e in chain)
  for reason in _REASONS:
    if reason in text:
      return reason
  root = chain[-1]
  first = (str(root).strip().splitlines() or [""])[0]
  return f"{type(root).__name__}: {first[:200]}"


def _save_error(manager: ocp.CheckpointManager, exc: BaseException) -> CheckpointError:
  orbax_noise.SAVE_FAILED.set()
  directory = str(manager.directory)
  try:  # an earlier save still in flight lands (or fails) before the intact steps are listed
    manager.wait_until_finished()
  except Exception:  # pylint: disable=broad-except
    pass
  steps = saved_steps(directory)
  kept = (f"the earlier checkpoints (steps {steps}) are intact; fix that and rerun to resume from "
          f"step {steps[-1]}" if steps else "no earlier checkpoint exists; fix that and rerun")
  return CheckpointError(f"saving a checkpoint in {directory} failed ({_reason(exc)}); {kept}")


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any,
         metrics: dict[str, float] | None = None, data_print: str | None = None) -> dict[str, str]:
  """Saves `state` and the grain iterator position after `step` training steps, with their
  fingerprints; returns the fingerprints ({"params", "opt_state", "data"}: 16 hex digits each;
  "data" is `data_print`, the `fingerprint.DataPrint` of what training read, when given).

  Raises CheckpointError when this save cannot start or an earlier asynchronous one failed.
  """
  prints = fingerprint.state_fingerprints(state, data_iter.get_state(), data_print)
  try:
    paths.writable_dir(str(manager.directory), "checkpoints")
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter)),
        metrics=metrics, force=True, custom_metadata={FINGERPRINTS: prints})
  except Exception as e:  # pylint: disable=broad-except
    raise _save_error(manager, e) from e
  return prints


def saved_fingerprints(manager: ocp.CheckpointManager, step: int) -> dict[str, str]:
  """The fingerprints saved with checkpoint `step` ({} for a checkpoint saved without them)."""
  return dict((manager.metadata(step).custom_metadata or {}).get(FINGERPRINTS) or {})


def _verified(manager, step: int, state, data_iter=None):
  """`state` (restored from checkpoint `step`) after checking it against the saved fingerprints;
  raises fingerprint.CorruptCheckpointError on a mismatch or NaN/Inf."""
  prints = saved_fingerprints(manager, step)
  for name in ("params", "opt_state"):
    part = state.get(name) if isinstance(state, Mapping) else getattr(state, name, None)
    if part is not None:
      fingerprint.verify(part, prints.get(name), f"the {name} of step {step}")
  # with an iterator to rewind (not in training, whose "data" print hashes what it read): the
  # saved print is process 0's iterator state, the other processes' states differ
  if data_iter is not None and "data" in prints and jax.process_count() == 1 and (
      got := fingerprint.json_hash(data_iter.get_state())) != prints["data"]:
    raise fingerprint.CorruptCheckpointError(
        f"the data iterator state of step {step}: checksum {got} differs from the "
        f"{prints['data']} saved with it")
  return state


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until the asynchronous save is on disk; raises CheckpointError if it failed."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _save_error(manager, e) from e


def close(manager: ocp.CheckpointManager, failure: BaseException | None = None) -> None:
  """Waits for the asynchronous save and closes the manager.

  While another error `failure` propagates, a failed save is logged instead of raised (unless
  `failure` is that save's CheckpointError already), so that `failure` is the error reported.
  """
  try:
    wait(manager)
    manager.close()
  except CheckpointError as e:
    if failure is None:
      raise
    if not isinstance(failure, CheckpointError):
      absl_logging.warning("%s", e)


def _path_shapes(tree) -> dict[str, tuple]:
  """{"Conv_0/kernel": shape} of a parameter tree (arrays, ShapeDtypeStructs or orbax metadata)."""
  name = lambda k: str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def shape_differences(saved_params, expected_params, saved_name: str = "the checkpoint") -> str:
  """"" when the parameter paths and shapes agree, else "3 differ: a/kernel: (3, 8) in
  <saved_name>, (3, 12) in the config; ..." (the first four)."""
  saved, expected = _path_shapes(saved_params), _path_shapes(expected_params)
  diff = [(p, saved.get(p, "absent"), expected.get(p, "absent"))
          for p in sorted(set(saved) | set(expected)) if saved.get(p) != expected.get(p)]
  listed = "; ".join(f"{p}: {a} in {saved_name}, {b} in the config" for p, a, b in diff[:4])
  return f"{len(diff)} differ: {listed}" if diff else ""


def check_shapes(saved_params, expected_params, where: str) -> None:
  """Raises an ArchitectureError naming `where` when the parameter paths or shapes differ."""
  if diff := shape_differences(saved_params, expected_params):
    raise ArchitectureError(
        f"{where}: the checkpoint's parameters do not fit config.model ({diff}); use the model "
        f"config the run was trained with, or another --workdir")


def _deleted(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether checkpoint `step`, which failed to read, was being deleted (by a running training's
  retention: orbax removes its files, then the folder, so a moment's wait tells)."""
  path = os.path.join(str(manager.directory), str(step))
  if os.path.isdir(path) and workdir_lock.holder(os.path.dirname(str(manager.directory))):
    time.sleep(0.5)
  return not os.path.isdir(path)


def _newest_readable(manager: ocp.CheckpointManager, read, steps: list[int]):
  """(read(step, metadata), step, unreadable steps) for the newest step in `steps` whose state
  metadata and `read` succeed; raises CheckpointError when none does.

  `read` may raise an ArchitectureError (another model), which is raised as it is: an older step
  would not fit either. A step whose folder is gone after a failed read was deleted while it was
  read (a running training keeps only its last checkpoints): it is skipped without a warning.
  """
  failed = []
  for step in sorted(steps, reverse=True):
    try:
      metadata = manager.item_metadata(step)["state"]
      metadata = metadata.tree if hasattr(metadata, "tree") else metadata
      return read(step, metadata), step, [f for f in failed if f[1] != DELETED]
    except ArchitectureError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # orbax raises plain Exceptions too
      failed.append((step, DELETED if _deleted(manager, step) else _reason(e)))
  bad = ", ".join(f"step {s} ({r})" for s, r in failed)
  workdir = os.path.dirname(str(manager.directory))
  if busy := workdir_lock.holder(workdir):
    raise CheckpointError(f"no readable checkpoint in {manager.directory}: {bad}; {workdir} is "
                          f"being written by a running training ({busy}): rerun once it has "
                          f"saved its next checkpoint")
  if all(r == DELETED for _, r in failed):
    raise CheckpointError(f"no readable checkpoint in {manager.directory}: {bad} by another "
                          f"process; rerun to read the checkpoints there now")
  raise CheckpointError(f"no readable checkpoint in {manager.directory}: {bad}; restore them from "
                        f"a backup, or move the folder away to start from scratch")


def _warn_unreadable(manager, failed, step: int, moved_to: str | None = None) -> None:
  for bad, reason in failed:
    where = f"; moved it to {os.path.join(moved_to, str(bad))}" if moved_to else ""
    absl_logging.warning("checkpoint step %d in %s cannot be read (%s); using step %d instead%s",
                         bad, manager.directory, reason, step, where)


def free_name(path: str) -> str:
  """`path`, or `path`.1, .2, ... when it is taken."""
  candidate, i = path, 0
  while os.path.exists(candidate):
    i += 1
    candidate = f"{path}.{i}"
  return candidate


def _changed_model_fields(workdir: str, model_config) -> str:
  """"; config.model fields changed since WORKDIR/config.json was written: nf (64 -> 32)", or ""
  (the newest recorded config, `run_config`)."""
  latest = run_config.load_latest(workdir)
  if latest is None:
    return ""
  path, saved = latest
  changed = run_config.changed_fields(saved.get("model", {}), model_config.to_dict())
  return f"; config.model fields changed since {path}: {', '.join(changed)}" if changed else ""


def restore(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any,
            model_config=None) -> tuple[Any, int, bool] | None:
  """Restores the newest readable checkpoint: (state, step, params_only), or None when there is none.

  The state gets the shardings of `abstract_state` (orbax reshards a checkpoint written on another
  number of devices or processes); `data_iter`, unless None, is rewound in place (training passes
  None: its data position is the step, `data.pipeline`). A params-only
  checkpoint (`save_params`: the start of a new run) gives ({"params": ...}, step, True) and leaves
  `data_iter` as it is: the caller builds a fresh optimiser state around the parameters. Unreadable
  checkpoints are skipped with a warning; one of another architecture raises an ArchitectureError
  naming the workdir, the differing parameter shapes and the `model_config` fields that differ
  from the run's config.json.
  """
  workdir = os.path.dirname(str(manager.directory))
  params = (abstract_state["params"] if isinstance(abstract_state, Mapping)
            else abstract_state.params)

  def read(step, saved):
    try:
      check_shapes(saved["params"], params, f"--workdir={workdir} (step {step})")
    except ArchitectureError as e:
      fields = _changed_model_fields(workdir, model_config) if model_config is not None else ""
      raise ArchitectureError(f"{e}{fields}") from e
    if "opt_state" not in saved:
      return _verified(manager, step, manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore({"params": params})))["state"]), True
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return _verified(manager, step, manager.restore(step, args=ocp.args.Composite(**items))[
        "state"], data_iter), False

  steps = list(manager.all_steps())
  if not steps:
    return None
  (state, params_only), step, failed = _newest_readable(manager, read, steps)
  if failed:  # moved out of the way of this run's next saves, kept for a post-mortem
    moved_to = os.path.join(workdir, UNREADABLE_DIR)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("megan_jax checkpoint fallback: all read")
    if jax.process_index() == 0:
      for bad, _ in failed:
        os.makedirs(moved_to, exist_ok=True)
        os.replace(os.path.join(str(manager.directory), str(bad)),
                   free_name(os.path.join(moved_to, str(bad))))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("megan_jax checkpoint fallback: moved")
    manager.reload()
    _warn_unreadable(manager, failed, step, moved_to)
  return state, step, params_only


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
                 force=True, custom_metadata={
                     FINGERPRINTS: fingerprint.state_fingerprints({"params": params})})
    manager.wait_until_finished()
  finally:
    manager.close()
  return os.path.join(checkpoint_dir(workdir), "0")


def _existing_manager(workdir: str) -> ocp.CheckpointManager:
  directory = checkpoint_dir(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir: {workdir} is a file, not a run directory; give the "
                             f"--workdir that training wrote its checkpoints to")
  if not os.path.isdir(directory) or not saved_steps(directory):
    if busy := workdir_lock.holder(workdir):
      raise FileNotFoundError(f"no checkpoint in workdir {workdir!r} yet: it is being written by "
                              f"a running training ({busy}); rerun once it has saved its first "
                              f"checkpoint (config.checkpoint_every)")
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"no checkpoint in workdir {workdir!r}: {directory} does not exist; train first with "
        f"--mode=train --workdir={workdir}")
  manager = make_manager(workdir, create=False, this_process_only=True)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in workdir {workdir!r}: {directory} is empty")
  return manager


def best_step(workdir: str) -> int:
  """Step of the checkpoint with the highest validation PSNR-Y (the latest if none was scored)."""
  return _existing_manager(workdir).best_step()


def restore_params(workdir: str, step: int | None = None) -> tuple[Any, int]:
  """Returns (params, step) of checkpoint `step` in `workdir` on one local device.

  With step None: the newest readable checkpoint (an unreadable newer one is skipped with a
  warning naming its step). A given `step` that cannot be read raises CheckpointError.
  """
  manager = _existing_manager(workdir)
  if step is not None and step not in manager.all_steps():
    busy = workdir_lock.holder(workdir)
    running = (f" ({workdir} is being written by a running training ({busy}), which keeps only "
               f"its last checkpoints)" if busy else "")
    raise FileNotFoundError(f"no checkpoint for step {step} in workdir {workdir!r}; available: "
                            f"{list(manager.all_steps())}{running}")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def read(s, tree):
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    state = manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return _verified(manager, s, {"params": state["state"]["params"]})["params"]

  steps = [step] if step is not None else list(manager.all_steps())
  for attempt in range(5):
    try:
      params, got, failed = _newest_readable(manager, read, steps)
      if step is None and attempt < 4:  # a newer step saved while an older was read: the newest
        manager.reload()
        if [s for s in manager.all_steps() if s > got and s not in steps]:
          steps = list(manager.all_steps())
          continue
      break
    except CheckpointError:
      if step is not None or attempt == 4:
        raise
      manager.reload()  # a running training saved and deleted checkpoints meanwhile: read anew
      if set(manager.all_steps()) == set(steps):
        raise
      steps = list(manager.all_steps())
  _warn_unreadable(manager, failed, got)
  return params, got
