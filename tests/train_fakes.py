"""Fakes for the training tests: a Vimeo-90K tree of tiny PNG clips, a toy model and a runner.

The toy model has MEGAN's interface ((B, n+1, h, w, 3) -> (B, 2n+1, 4h, 4w, 3), an "lmga" random
stream in training) and compiles in about a second, so the tests of the training machinery
(resume, reruns, NaN, meshes, processes) do not pay MEGAN's compile time; tests/test_train.py runs the
tiny MEGAN end to end separately.

Run as a script, it is `python -m megan_jax.main` with the toy model:
    python tests/train_fakes.py --config=configs/vimeo.py:tiny --workdir=... [--config.x=...]
"""

import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_random_params(workdir: str, model, frames_shape: tuple, *, step: int = 3,
                       seed: int = 0, **init_kwargs) -> None:
  """A workdir holding one orbax checkpoint (`step`) of `model`'s parameters drawn as 0.05 N(0, 1)
  from numpy's `seed`: a trained-looking start for eval and infer tests without a training.
  frames_shape: the (1, n+1, h, w, 3) input the parameter shapes are derived from."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from megan_jax import checkpointing  # pylint: disable=import-outside-toplevel
  keys = {"params": jax.random.key(0), "lmga": jax.random.key(1)}
  shapes = jax.eval_shape(lambda: model.init(keys, jnp.zeros(frames_shape), **init_kwargs))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype),
                        shapes["params"])
  manager = checkpointing.make_manager(workdir, async_save=False)
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
  manager.wait_until_finished()
  manager.close()


class ToyModel(nn.Module):
  """Per-frame conv, time mixing, pixel shuffle x4; Gaussian feature noise from "lmga" in training."""
  width: int = 8

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    b, t, h, w, c = x.shape  # (B, n+1, h, w, 3)
    f = nn.Conv(self.width, (3, 3))(x.reshape(b * t, h, w, c))
    if train:
      f = f + 0.01 * jax.random.normal(self.make_rng("lmga"), f.shape)
    f = jnp.moveaxis(nn.relu(f).reshape(b, t, h, w, self.width), 1, 3)  # (B, h, w, T, W)
    y = nn.Conv((2 * t - 1) * 3 * 16, (3, 3))(f.reshape(b, h, w, t * self.width))
    y = y.reshape(b, h, w, 2 * t - 1, 4, 4, 3).transpose(0, 3, 1, 4, 2, 5, 6)
    return y.reshape(b, 2 * t - 1, 4 * h, 4 * w, 3)  # (B, 2n+1, 4h, 4w, 3)


def make_vimeo_tree(root: str, num_clips: int = 6, size: tuple = (64, 96), seed: int = 0) -> str:
  """Writes ROOT/sequences/00001/000k/im1..7.png (smooth moving patterns) and
  ROOT/sep_trainlist.txt; returns root."""
  rng = np.random.default_rng(seed)
  h, w = size
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  clips = []
  for k in range(num_clips):
    clip = f"00001/{k + 1:04d}"
    os.makedirs(os.path.join(root, "sequences", clip), exist_ok=True)
    fy, fx, phase = rng.uniform(0.05, 0.3, 3)
    for t in range(7):
      img = np.stack([np.sin(fy * yy + fx * xx + phase + 0.3 * t + ch) for ch in range(3)], -1)
      img = np.clip(127.5 + 100 * img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(os.path.join(root, "sequences", clip, f"im{t + 1}.png"))
    clips.append(clip)
  with open(os.path.join(root, "sep_trainlist.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(clips) + "\n")
  return root


def fast_fields(data_root: str, **fields) -> dict:
  """Config fields (dotted paths; `a__b=v` in `fields` sets a.b) of a fast run on the fake tree."""
  base = {"data.root": data_root, "data.list_file": "sep_trainlist.txt", "data.crop": 8,
          "data.workers": 0, "data.read_threads": 1, "batch_size": 4, "num_steps": 4,
          "log_every": 1, "checkpoint_every": 2, "eval_every": 0}
  base.update({k.replace("__", "."): v for k, v in fields.items()})
  return base


def overrides(data_root: str, **fields) -> list[str]:
  """`fast_fields` as command-line overrides."""
  return [f"--config.{k}={v}" for k, v in fast_fields(data_root, **fields).items()]


def val_spec(data_root: str):
  """The first clip of the fake tree as a validation / evaluation set."""
  sys.path.insert(0, REPO)
  from configs import vimeo  # pylint: disable=import-outside-toplevel
  return vimeo.eval_spec("val", "vimeo", data_root, "sep_trainlist.txt", max_clips=1)


def fast_config(variant: str, data_root: str, **fields):
  """configs/vimeo.py:<variant> with `fast_fields` applied."""
  sys.path.insert(0, REPO)
  from configs import vimeo  # pylint: disable=import-outside-toplevel
  config = vimeo.get_config(variant)
  for path, value in fast_fields(data_root, **fields).items():
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _toy_run(train_and_evaluate):
  """train_and_evaluate with the toy model, printing its result as `RESULT {json}` (one line
  per process)."""

  def run(config, workdir):
    result = train_and_evaluate(config, workdir, model=ToyModel())
    print("RESULT " + json.dumps({"process": jax.process_index(), **result}), flush=True)
    return result

  return run


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  from absl import app  # pylint: disable=g-import-not-at-top
  from megan_jax import main, train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate = _toy_run(train.train_and_evaluate)
  app.run(main.main, flags_parser=main._parse)  # pylint: disable=protected-access
