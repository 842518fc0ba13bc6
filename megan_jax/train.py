"""Training: one jitted train step over a device mesh, checkpoints, logs and periodic validation.

The same code runs on one CPU, several devices and several hosts: the global batch is sharded over
the "data" axis of a mesh of all devices (in process order), the train state is replicated, and each
process feeds its contiguous slice of the global batch (`jax.make_array_from_process_local_data`).
A run is a pure function of its config: parameters, LMGA's random pooling and the data all derive
from `config.seed` (or `config.seeds`, one stream each: megan_jax/repro.py), the per-step key is
`fold_in(key, step)` and the global batch of a step is a function of the data seed and the step
(`data.pipeline`), whatever the number of processes and devices. So a run stopped and resumed from
its checkpoint, with the same or another number of processes and devices (orbax reshards the state;
the data position is the step), reads the batches an uninterrupted run reads, and ends
bit-identical to it on the CPU when the device count is unchanged.

One training at a time holds a workdir (`workdir_lock`); stop signals save and stop, or stop at once
before the first step (`stop_signals`); the run's configs and logs are kept across resumes and
restarts (`run_config`, `logging_utils`).
"""

import math
import os
import signal
import sys
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from megan_jax import (checkpointing, evaluate, fingerprint, logging_utils, multiprocess, paths,
                       pretrained, progress, report, repro, run_config, stop_signals, train_val,
                       workdir_lock)
from megan_jax.data.pipeline import make_train_iter, make_train_source
from megan_jax.data.sources import DataError
from megan_jax.losses import charbonnier
from megan_jax.models import build_model
from megan_jax.repro import rng_streams

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
Interrupted = stop_signals.Interrupted


class NonFiniteError(FloatingPointError):
  """The loss, gradient or parameters became NaN/Inf; nothing after the last good checkpoint kept."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array      # () int32, optimiser steps done
  params: Any
  opt_state: Any


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  param_norm: clu_metrics.Average.from_output("param_norm")


def setup_runtime(config: ml_collections.ConfigDict) -> None:
  """Process-wide setup that must precede the first JAX computation (main.py calls it first).

  config.deterministic adds XLA's `--xla_gpu_deterministic_ops=true` (deterministic scatter and
  reductions; it only matters on GPU, the CPU is deterministic anyway). config.distributed.enabled
  calls `jax.distributed.initialize` (arguments left unset are auto-detected on SLURM/TPU/MPI).
  config.compilation_cache_dir turns on JAX's persistent compilation cache there (default
  `paths.default_cache_dir()`; None: off): a later run of the same program and shapes loads it
  instead of compiling, and the compile line says so (`progress.compiling`).
  """
  if config.deterministic and DETERMINISTIC_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + DETERMINISTIC_FLAG).strip()
  dist = config.distributed
  if dist.enabled:
    jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                               num_processes=dist.num_processes, process_id=dist.process_id)
  cache = config.get("compilation_cache_dir")
  cache = os.path.abspath(os.path.expanduser(cache)) if cache else None
  if cache != jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache)
    compilation_cache.reset_cache()  # JAX decides whether to use it once: decide again
  if cache:
    progress.watch_compilation_cache(cache)


def new_state(params, tx: optax.GradientTransformation) -> TrainState:
  """Step 0 of a run: the initial parameters and a fresh optimiser state."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def lr_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Cosine annealing with warm restarts: each cycle of `opt.cycle_steps` steps goes from
  `opt.lr` to `opt.min_lr` (lr_t = min + (lr - min)(1 + cos(pi t / T)) / 2), then restarts;
  `opt.restarts` restarts (default: as many as `num_steps` needs)."""
  cycles = (opt.restarts + 1) if opt.restarts is not None else math.ceil(
      num_steps / opt.cycle_steps)
  cycle = optax.cosine_decay_schedule(opt.lr, opt.cycle_steps, alpha=opt.min_lr / opt.lr)
  if cycles <= 1:
    return cycle
  return optax.join_schedules([cycle] * cycles,
                              [opt.cycle_steps * (i + 1) for i in range(cycles - 1)])


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation,
                                                               optax.Schedule]:
  opt = config.optimizer
  schedule = lr_schedule(opt, config.num_steps)
  return optax.adam(schedule, b1=opt.b1, b2=opt.b2), schedule


def make_train_step(model, tx: optax.GradientTransformation, loss_eps: float):
  """train_step(state, batch, rng) -> (state, TrainMetrics): one Adam step on the Charbonnier loss.

  batch: {"lr": (B, n+1, h, w, 3), "gt": (B, 2n+1, 4h, 4w, 3)}; rng: uint32 key data (2,)
  of the "lmga" stream, folded with the step number.
  """

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    key = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      pred = model.apply({"params": params}, batch["lr"], train=True, rngs={"lmga": key})
      return charbonnier(pred, batch["gt"], loss_eps)  # (B, 2n+1, 4h, 4w, 3) -> ()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = TrainMetrics.single_from_model_output(
        loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError/OSError naming the config field for settings that cannot work."""
  data = config.data
  if data.name == "vimeo" and not os.path.isdir(str(data.root)):
    is_file = os.path.exists(str(data.root))
    raise (NotADirectoryError if is_file else FileNotFoundError)(
        f"config.data.root: {data.root} {'is a file, not a folder' if is_file else 'does not exist'}"
        f"; expected the Vimeo-90K septuplet layout "
        f"ROOT/sequences/00001/0001/im1.png ... im7.png and the clip list config.data.list_file "
        f"(now {data.list_file!r}; 'train' is the packaged sep_trainlist.txt, or give "
        f"ROOT/sep_trainlist.txt). Set --config.data.root=/path/to/vimeo_septuplet")
  if data.crop % 4:
    raise ValueError(f"config.data.crop: {data.crop} is not a multiple of 4")
  _check_crop_fits(data)
  if config.num_steps <= 0:
    raise ValueError(f"config.num_steps: {config.num_steps} must be positive")
  devices, processes = jax.device_count(), jax.process_count()
  for count, what in ((devices, "devices of the mesh"), (processes, "processes")):
    if config.batch_size % count:  # a checkpoint resumes on any counts that divide it
      raise ValueError(f"config.batch_size: {config.batch_size} (the global batch) is not "
                       f"divisible by the {count} {what}; use a multiple of {count}, or as many "
                       f"devices and processes as divide it (a run resumes on any such number)")
  if config.eval_every and config.val.get("kind") in ("vimeo", "folders", "video") and (
      not os.path.exists(str(config.val.root))):
    raise FileNotFoundError(
        f"config.val.root: {config.val.root} does not exist (validation every "
        f"config.eval_every={config.eval_every} steps); set it or --config.eval_every=0")


def _check_crop_fits(data) -> None:
  """config.data.crop against the LR frames of the first training clip, before the model's
  initialisation (which runs at the crop's size: seconds to minutes for a large one)."""
  record = make_train_source(data)[0]
  if record.get("lr") is not None:
    h, w = record["lr"].shape[1:3]
  else:
    h, w = record["gt"].shape[1] // 4, record["gt"].shape[2] // 4
  if data.crop > min(h, w):
    side = min(h, w) - min(h, w) % 4
    raise DataError(f"config.data.crop: {data.crop} is larger than the {w}x{h} LR frames of the "
                    f"training data ({record.get('where', 'its first clip')}); the crop is in LR "
                    f"pixels: at most {side} here")


def _any_process(flag: bool) -> bool:
  """True when `flag` is set on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _host_scalars(metrics: TrainMetrics) -> dict[str, float]:
  return {k: float(v) for k, v in metrics.compute().items()}


def _check_finite(scalars: dict[str, float], step: int, last_good: int | None, workdir: str):
  bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
  if bad:
    where = (f"the last good checkpoint is step {last_good} in {checkpointing.checkpoint_dir(workdir)}"
             if last_good is not None else "no checkpoint was saved")
    raise NonFiniteError(
        f"non-finite training values at or before step {step}: {bad}; stopped without saving "
        f"this state ({where}). Lower config.optimizer.lr or check the data, then rerun to resume.")


def _local_params(params):
  """The replicated parameters as arrays on one local device (no communication)."""
  return jax.tree.map(lambda x: x.addressable_data(0), params)


def _make_data_iter(config, per_process_batch: int, start_step: int):
  """This process's slices of the global batches of steps start_step + 1, start_step + 2, ..."""
  return make_train_iter(config.data, batch_size=per_process_batch,
                         seed=repro.stream_seed(config.seed, config.seeds, "data"),
                         shard_index=jax.process_index(), shard_count=jax.process_count(),
                         workers=config.data.workers, start_step=start_step)


def global_mesh() -> Mesh:
  """The 1-D "data" mesh of all devices in process order: process p's devices hold rows
  [p B, (p + 1) B) of the global batch, the slice its data iterator reads."""
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), ("data",))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       model=None) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the last
  logged train scalars; with config.final_eval, also runs evaluate.evaluate on the result.

  `model` replaces `build_model(config.model)` (tests pass a toy model with MEGAN's interface).
  Prints a summary (parameters per top-level module, devices, batch, workdir), the compile time
  of the train step, a log line every config.log_every steps and, at the end, what was written.
  Raises workdir_lock.WorkdirBusyError while another training holds `workdir`.
  """
  validate_config(config)
  paths.writable_dir(workdir, "--workdir")
  with workdir_lock.hold(workdir, enabled=jax.process_index() == 0), stop_signals.StopSignals(
      checkpointing.checkpoint_dir(workdir)) as stop:
    last_logged = _train(config, workdir, model, stop)
  if last_logged is not None and config.final_eval:
    multiprocess.on_process_0("the final evaluation", evaluate.evaluate, config, workdir)
  return last_logged or {}


def _train(config, workdir: str, model, stop: stop_signals.StopSignals) -> dict[str, float] | None:
  """The run itself, under the workdir's lock: the last logged scalars, or None when there was
  nothing to train."""
  is_main = jax.process_index() == 0
  mesh = global_mesh()
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))
  to_global = lambda x, sharding: jax.make_array_from_process_local_data(sharding, np.asarray(x))

  model = build_model(config.model) if model is None else model
  tx, schedule = make_optimizer(config)
  streams = {k: to_global(v, replicated) for k, v in rng_streams(config.seed, config.seeds).items()}
  n_in, crop = config.data.num_input_frames, config.data.crop

  def init_fn(params_key, lmga_key):
    x = jnp.zeros((1, n_in, crop, crop, 3), jnp.float32)  # (B, n+1, h, w, 3)
    params = model.init({"params": params_key, "lmga": lmga_key}, x, train=False)["params"]
    return new_state(params, tx)

  abstract = jax.eval_shape(init_fn, streams["params"], streams["lmga_init"])
  state_sharding = jax.tree.map(lambda _: replicated, abstract)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sharding)
  train_step = jax.jit(make_train_step(model, tx, config.loss_eps),
                       in_shardings=(state_sharding, data_sharding, replicated),
                       out_shardings=(state_sharding, replicated), donate_argnums=(0,))

  source = pretrained.start_workdir(config, workdir, expected=abstract.params, announce=False)
  manager = checkpointing.make_manager(workdir, keep=config.keep_checkpoints,
                                       async_save=config.async_checkpointing)
  # the data position is the step (not the saved iterator state): any process count resumes
  restored = checkpointing.restore(manager, abstract, None, model_config=config.model)
  data_print = fingerprint.DataPrint()
  if restored is not None and restored[2]:  # params only: the start of a new run
    last_good = restored[1]
    state = jax.jit(lambda p: new_state(p, tx), out_shardings=state_sharding)(restored[0]["params"])
    source = source or (f"the parameters of step {last_good} in "
                        f"{checkpointing.checkpoint_dir(workdir)}")
    progress.note(f"starting {workdir} from {source} with a fresh optimiser state and data order")
  elif restored is not None:
    state, last_good, _ = restored
    data_print = fingerprint.DataPrint(
        checkpointing.saved_fingerprints(manager, last_good).get("data", ""))
    progress.note(f"resumed from step {last_good} in {checkpointing.checkpoint_dir(workdir)}")
  else:
    last_good = None
    state = jax.jit(init_fn, out_shardings=state_sharding)(streams["params"], streams["lmga_init"])
  start = int(state.step)
  data_iter = _make_data_iter(config, config.batch_size // jax.process_count(), start)
  if is_main:
    for note in (logging_utils.set_aside_earlier_run(workdir) if start == 0 else None,
                 run_config.record(workdir, config)):
      if note:
        progress.note(note)
  if start > config.num_steps:
    manager.close()
    progress.note(f"nothing to train: {checkpointing.checkpoint_dir(workdir)} holds step {start}, "
                  f"past config.num_steps={config.num_steps}. Raise --config.num_steps to train "
                  f"on, or use --mode=eval to evaluate it.")
    return None
  if is_main:
    progress.note(logging_utils.run_summary(state.params, workdir, config))

  writer = logging_utils.MetricWriter(workdir, enabled=is_main, resume_step=start)
  validator = (train_val.Validator(config, model)
               if config.eval_every and start < config.num_steps else None)

  def next_batch():
    local = next(data_iter)
    data_print.add(local["digest"])
    return {k: to_global(local[k], data_sharding) for k in ("lr", "gt")}, local["digest"]
  window, window_first, last_logged, bar = None, None, {}, None
  try:
    # grain starts its worker processes at the first batch
    with stop.sparing_children(config.data.workers > 0):
      batch, digests = next_batch() if start < config.num_steps else (None, None)
    repro.write_manifest(workdir, config, start, state.params,
                         None if digests is None else fingerprint.global_batch_hash(digests))
    for step in range(start + 1, config.num_steps + 1):  # `step` steps done after this one
      if bar is None:  # the first step compiles: rates and ETAs count from its end
        with progress.compiling("the train step"):
          state, metrics = jax.block_until_ready(train_step(state, batch, streams["lmga"]))
        stop.started()
        # on a terminal; in a file the log lines say the same
        bar = progress.bar(config.num_steps, "train", unit="step", initial=step,
                           shown=is_main and sys.stderr.isatty())
      else:
        state, metrics = train_step(state, batch, streams["lmga"])
        bar.update()
      if window is None:
        window, window_first = metrics, step
      else:
        window = window.merge(metrics)
      is_last = step == config.num_steps
      is_log = step % config.log_every == 0 or is_last
      stopping = (_any_process(stop.signum is not None) if is_log or jax.process_count() == 1
                  else False)
      val = None
      if is_log or stopping:
        scalars = _host_scalars(window)
        _check_finite(scalars, step, last_good, workdir)
        window = None
        lr = float(schedule(step - 1))
        last_logged = {**scalars, "lr": lr}
        speed = _speed(bar, config.batch_size)
        writer.write_scalars(step, {**last_logged, **speed})
        progress.note(_log_line(step, config.num_steps, scalars["loss"], lr, speed, window_first))
      if validator is not None and (step % config.eval_every == 0 or is_last):
        val, image = validator(_local_params(state.params))
        writer.write_scalars(step, val)
        writer.write_image(step, "val/LR_model_baseline_GT", image)
        progress.note(_val_line(step, evaluate.dataset_name(config.val), val))
      if step % config.checkpoint_every == 0 or is_last or stopping or val is not None:
        if window is not None:
          _check_finite(_host_scalars(window), step, last_good, workdir)
        prints = checkpointing.save(manager, step, state, data_iter, metrics={
            checkpointing.BEST_METRIC: val["val_psnr_y"]} if val else None,
                                    data_print=data_print.value())
        writer.write_fields(step, {"fingerprints": prints})
        last_good = step
      if stopping:
        checkpointing.wait(manager)
        name = signal.Signals(stop.signum).name if stop.signum else "a stop request"
        raise Interrupted(
            f"stopped by {name} after step {step}; checkpoint saved in "
            f"{checkpointing.checkpoint_dir(workdir)}; rerun the same command to resume",
            stop.signum or signal.SIGTERM)
      if not is_last:
        batch, _ = next_batch()
    checkpointing.wait(manager)
    saved = manager.all_steps()
  except BaseException as e:
    checkpointing.close(manager, failure=e)
    raise
  else:
    checkpointing.close(manager)
  finally:
    if bar is not None:
      bar.close()
    writer.close()
  progress.note(report.wrote_lines(logging_utils.written(workdir, saved)))
  return last_logged


def _speed(bar, batch_size: int) -> dict[str, float]:
  """steps/s, clips/s and ETA since the first compiled step ({} at that step itself)."""
  speed = progress.speed(bar)
  if not speed:
    return {}
  return {"steps_per_sec": speed["per_sec"], "clips_per_sec": speed["per_sec"] * batch_size,
          "eta_sec": speed["eta_sec"]}


def _val_line(step: int, name: str, val: dict[str, float]) -> str:
  """The validation line: the model's PSNR-Y/SSIM-Y on `name` and the baseline's beside them."""
  return (f"step {step} validation on {name}: PSNR-Y {val['val_psnr_y']:.2f} dB, SSIM-Y "
          f"{val['val_ssim_y']:.4f} (bicubic + blending: {val['val_baseline_psnr_y']:.2f} dB, "
          f"{val['val_baseline_ssim_y']:.4f})")


def _log_line(step: int, num_steps: int, loss: float, lr: float, speed: dict[str, float],
              first: int | None = None) -> str:
  """The log line of `step`; `loss` is the mean over steps `first`..`step` (the interval since
  the last line: one batch's loss is too noisy to show a trend)."""
  over = f" (mean of steps {first}-{step})" if first is not None and first < step else ""
  line = f"step {step}/{num_steps} | loss {loss:.5f}{over} | lr {lr:.3g}"
  if speed:
    line += (f" | {speed['steps_per_sec']:.2f} steps/s | {speed['clips_per_sec']:.1f} clips/s | "
             f"ETA {progress.format_duration(speed['eta_sec'])}")
  return line
