"""Parameter sets shipped with the package, and the `.npz` format they (and exports) use.

`config.pretrained` names one: a packaged set (`PACKAGED`, e.g. "demo_small", the small MEGAN of
configs/demo.py, made by configs/pretrain.py, configs/pretrain_more.py then
configs/pretrain_downscaled.py) or the path of a `.npz` written by `python -m megan_jax.main
--mode=export`. A run whose workdir holds no checkpoint starts
from it: `start_workdir` checks its arrays against the configured model's (`jax.eval_shape`,
nothing is computed) and only then writes it as the params-only step-0 checkpoint
(`checkpointing.save_params`, under the workdir's lock), so training fine-tunes it (fresh optimiser
state and data order) and eval and infer use it as is. A set that does not fit leaves the workdir
as it was.

File format: one array per parameter under its '/'-joined tree path ("front/conv_first/kernel"),
plus "__meta__", a JSON string (config, step, source workdir, date; "started_from": the meta of
the parameters the run started from, `config.pretrained`, when it had any).
"""

import datetime
import importlib.resources
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from megan_jax import checkpointing, npz, paths, progress, workdir_lock
from megan_jax.models import build_model

PACKAGED = {"demo_small": "demo_small.npz"}
FITS = {"demo_small": "configs/demo.py"}  # the config whose model each packaged set is
META_KEY = "__meta__"
BUSY_WAIT_S = 60  # how long a start waits for another command writing the same step 0


def resolve(name: str) -> str:
  """The file of a packaged set or a path; a clear error for anything else."""
  if name in PACKAGED:
    return str(importlib.resources.files(__package__) / PACKAGED[name])
  if name.endswith(".npz"):
    if not os.path.exists(name):
      raise FileNotFoundError(f"config.pretrained: {name} does not exist")
    return name
  raise ValueError(f"config.pretrained: {name!r} is neither a packaged parameter set "
                   f"{sorted(PACKAGED)} nor a .npz file (write one with --mode=export)")


def short_name(name: str) -> str:
  """"demo_small" for a packaged set, the file name without .npz for a path."""
  return name if name in PACKAGED else os.path.splitext(os.path.basename(name))[0]


def load(name: str) -> tuple[dict, dict]:
  """(params, meta) of a packaged set or an exported `.npz`."""
  path = resolve(name)
  try:
    arrays = npz.read(path)
  except npz.NpzError as e:
    raise ValueError(f"config.pretrained: {path} is not a parameter file ({e.reason}); write one "
                     f"with --mode=export") from e
  except OSError as e:  # a directory named .npz
    raise type(e)(f"config.pretrained: {e}") from e
  try:
    meta = json.loads(str(arrays.pop(META_KEY))) if META_KEY in arrays else {}
  except ValueError as e:
    raise ValueError(f"config.pretrained: {path}: its {META_KEY} is not JSON ({e}); it is not a "
                     f"parameter file written by --mode=export") from e
  flat = {tuple(k.split("/")): v for k, v in arrays.items()}
  if not flat:
    raise ValueError(f"config.pretrained: {path} holds no parameters")
  return traverse_util.unflatten_dict(flat), meta


def save(path: str, params: Any, meta: dict) -> None:
  """Writes `params` (a nested dict of arrays) and `meta` to `path` atomically."""
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  meta = {**meta, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  try:
    np.savez(tmp, **flat, **{META_KEY: np.asarray(json.dumps(meta))})
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):  # a failed write leaves nothing behind
      os.remove(tmp)


def expected_params(config, model=None):
  """The parameter tree (ShapeDtypeStructs) of `model` (default: `build_model(config.model)`)."""
  model = build_model(config.model) if model is None else model
  x = jax.ShapeDtypeStruct((1, config.data.num_input_frames, config.data.crop,
                            config.data.crop, 3), jnp.float32)  # (B, n+1, h, w, 3)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  return jax.eval_shape(
      lambda k, x: model.init({"params": k, "lmga": k}, x, train=False)["params"], key, x)


def _misfit(config, name: str, path: str, meta: dict, diff: str, workdir: str) -> ValueError:
  """The one-line error for a parameter set that does not fit config.model."""
  what = f"{name} ({path})" if name in PACKAGED else path
  fields = " ".join(f"--config.model.{k}={v}" for k, v in sorted(meta.get("model", {}).items())
                    if config.model.get(k, v) != v)
  if name in FITS:
    fix = f"{name} is the model of {FITS[name]}: use --config={FITS[name]} with its model fields"
  elif "config_file" in meta:
    fix = f"it was exported from a run of {meta['config_file']}: use that run's model fields"
  else:
    fix = "use the config.model it was trained with"
  fix += f" ({fields})" if fields else ""
  return checkpointing.ArchitectureError(
      f"config.pretrained: {what} does not fit config.model ({diff}); {fix}. Nothing was written "
      f"to {workdir}")


def _check_finite(params, name: str, workdir: str) -> None:
  """Refuses a parameter set holding NaN or Inf before it becomes a checkpoint: the run would stop
  at its first step, and every rerun would meet that checkpoint instead of a good file."""
  flat = traverse_util.flatten_dict(params)
  bad = [k for k, v in flat.items() if not np.all(np.isfinite(np.asarray(v, np.float64)))]
  if bad:
    what = f"{name} ({resolve(name)})" if name in PACKAGED else resolve(name)
    listed = ", ".join("/".join(k) for k in sorted(bad)[:3]) + (", ..." if len(bad) > 3 else "")
    raise ValueError(f"config.pretrained: {what} holds NaN or Inf in {len(bad)} of its {len(flat)} "
                     f"arrays ({listed}); export it again from a good checkpoint or give another "
                     f"file. Nothing was written to {workdir}")


def training(meta: dict) -> str:
  """The training behind a parameter file, earliest stage first, from its "started_from" chain:
  "1200 + 750 steps of configs/pretrain.py" (one config), else "1200 steps of A, then 750 of B"."""
  stages = []
  while meta and "steps" in meta:
    stages.insert(0, (meta["steps"], meta.get("config_file", "an unknown config")))
    meta = meta.get("started_from")
  if len({config_file for _, config_file in stages}) == 1:
    return f"{' + '.join(str(steps) for steps, _ in stages)} steps of {stages[0][1]}"
  return ", then ".join(f"{steps} {'steps ' if i == 0 else ''}of {config_file}"
                        for i, (steps, config_file) in enumerate(stages))


def describe_checkpoint(config, workdir: str, params, step: int) -> str:
  """What the checkpoint of `step` in `workdir` holds, in words, for a run to name what it uses:
  "the parameters of step 200 in W/checkpoints", or for a step-0 checkpoint that holds the
  `config.pretrained` parameters unchanged, "the parameters demo_small (6000 steps of ...)"."""
  where = f"step {step} in {checkpointing.checkpoint_dir(workdir)}"
  if step == 0 and config.get("pretrained"):
    start, meta = load(config.pretrained)
    mine = traverse_util.flatten_dict(dict(params.get("params", params)))
    theirs = traverse_util.flatten_dict(dict(start))
    if mine.keys() == theirs.keys() and all(
        np.array_equal(np.asarray(mine[k]), np.asarray(theirs[k])) for k in mine):
      trained = f" ({training(meta)})" if "steps" in meta else ""
      return f"the parameters {config.pretrained}{trained}, {where}"
  return f"the parameters of {where}"


def start_workdir(config, workdir: str, expected=None, announce: bool = True) -> str | None:
  """Makes `config.pretrained` the step-0 checkpoint of `workdir` when it holds none yet, once its
  arrays match `expected` (a parameter tree of arrays or ShapeDtypeStructs; default:
  `expected_params(config)`). Returns what it started from ("the parameters demo_small (6000 steps
  of configs/pretrain.py, then 5000 of configs/pretrain_more.py)"), noted on screen when
  `announce`, or None when it wrote nothing."""
  name = config.pretrained
  if not name or checkpointing.has_checkpoints(workdir):
    return None
  params, meta = load(name)
  diff = checkpointing.shape_differences(
      params, expected_params(config) if expected is None else expected, "the file")
  if diff:
    raise _misfit(config, name, resolve(name), meta, diff, workdir)
  _check_finite(params, name, workdir)
  try:
    with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
      if checkpointing.has_checkpoints(workdir):  # another command started it meanwhile
        return None
      checkpointing.save_params(workdir, params)
  except workdir_lock.WorkdirBusyError:
    # two commands started from config.pretrained at once (an eval and a training, two evals):
    # the other one is writing this step 0; a training that holds the workdir for long is refused
    if _wait_for_checkpoint(workdir, BUSY_WAIT_S):
      return None
    raise
  trained = f" ({training(meta)})" if "steps" in meta else ""
  source = f"the parameters {name}{trained}"
  if announce:
    progress.note(f"starting {workdir} from {source}")
  return source


def _wait_for_checkpoint(workdir: str, seconds: float) -> bool:
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if checkpointing.has_checkpoints(workdir):
      return True
    time.sleep(0.1)
  return checkpointing.has_checkpoints(workdir)


def export(config, workdir: str, config_file: str) -> str:
  """Writes the parameters of checkpoint `config.export.step` (default: the latest) of `workdir` to
  `config.export.output` (default WORKDIR/params.npz; an existing file only if
  `config.export.overwrite`, checked before anything is read); returns that path."""
  output = config.export.output or os.path.join(workdir, "params.npz")
  if not output.endswith(".npz") and not os.path.isdir(output):  # a folder: writable_file says so
    raise ValueError(f"config.export.output: {output} does not end in .npz; give a .npz file path "
                     f"(config.pretrained reads .npz files)")
  if os.path.isdir(output):
    raise IsADirectoryError(f"config.export.output: {os.path.abspath(output)} is a directory; "
                            f"give a file path")
  if os.path.isfile(output) and not config.export.overwrite:
    raise FileExistsError(f"config.export.output: {os.path.abspath(output)} exists; choose another "
                          f"path or set --config.export.overwrite=True to replace it")
  # read before the output's folder is made: a workdir without checkpoints leaves nothing behind
  params, step = checkpointing.restore_params(workdir, config.export.step)
  output = paths.writable_file(output, "config.export.output")
  meta = {"steps": int(step), "workdir": os.path.abspath(workdir), "config_file": config_file,
          "model": config.model.to_dict()}
  if config.pretrained:  # the run fine-tuned these: their history, so steps add up
    earlier = {k: v for k, v in load(config.pretrained)[1].items() if k != "model"}
    meta["started_from"] = {"name": config.pretrained, **earlier}
  save(output, params, meta)
  progress.note(f"wrote {output} (the parameters of step {step} of {workdir})")
  return output
