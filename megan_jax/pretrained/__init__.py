"""Parameter sets shipped with the package, and the `.npz` format they (and exports) use.

`config.pretrained` names one: a packaged set (`PACKAGED`, e.g. "demo_small", the small MEGAN of
configs/demo.py, made by configs/pretrain.py) or the path of a `.npz` written by
`python -m megan_jax.main --mode=export`. A run whose workdir holds no checkpoint starts from it:
`start_workdir` writes it as the params-only step-0 checkpoint (`checkpointing.save_params`), so
training fine-tunes it (fresh optimiser state and data order) and eval and infer use it as is.

File format: one array per parameter under its '/'-joined tree path ("front/conv_first/kernel"),
plus "__meta__", a JSON string (config, step, source workdir, date; "started_from": the meta of
the parameters the run started from, `config.pretrained`, when it had any).
"""

import datetime
import importlib.resources
import json
import os
from typing import Any

import numpy as np
from flax import traverse_util

from megan_jax import checkpointing, progress

PACKAGED = {"demo_small": "demo_small.npz"}
META_KEY = "__meta__"


def resolve(name: str) -> str:
  """The file of a packaged set or a path; a clear error for anything else."""
  if name in PACKAGED:
    return str(importlib.resources.files(__package__) / PACKAGED[name])
  if name.endswith(".npz"):
    if not os.path.isfile(name):
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
    with np.load(path, allow_pickle=False) as f:
      meta = json.loads(str(f[META_KEY])) if META_KEY in f.files else {}
      flat = {tuple(k.split("/")): f[k] for k in f.files if k != META_KEY}
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"config.pretrained: {path} is not a parameter file ({e})") from e
  if not flat:
    raise ValueError(f"config.pretrained: {path} holds no parameters")
  return traverse_util.unflatten_dict(flat), meta


def save(path: str, params: Any, meta: dict) -> None:
  """Writes `params` (a nested dict of arrays) and `meta` to `path` atomically."""
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  meta = {**meta, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **flat, **{META_KEY: np.asarray(json.dumps(meta))})
  os.replace(tmp, path)


def start_workdir(config, workdir: str) -> None:
  """Makes `config.pretrained` the step-0 checkpoint of `workdir` when it holds none yet."""
  name = config.pretrained
  if not name or checkpointing.has_checkpoints(workdir):
    return
  params, meta = load(name)
  checkpointing.save_params(workdir, params)
  trained = f" ({meta['steps']} steps of {meta['config_file']})" if "steps" in meta else ""
  progress.note(f"starting {workdir} from the parameters {name}{trained}")


def export(config, workdir: str, config_file: str) -> str:
  """Writes the parameters of checkpoint `config.export.step` (default: the latest) of `workdir` to
  `config.export.output` (default WORKDIR/params.npz); returns that path."""
  output = config.export.output or os.path.join(workdir, "params.npz")
  params, step = checkpointing.restore_params(workdir, config.export.step)
  meta = {"steps": int(step), "workdir": os.path.abspath(workdir), "config_file": config_file,
          "model": config.model.to_dict()}
  if config.pretrained:  # the run fine-tuned these: their history, so steps add up
    earlier = {k: v for k, v in load(config.pretrained)[1].items() if k != "model"}
    meta["started_from"] = {"name": config.pretrained, **earlier}
  save(output, params, meta)
  progress.note(f"wrote {output} (the parameters of step {step} of {workdir})")
  return output
