"""Eval-mode forward pass on whole frames of any size.

MEGAN maps the n + 1 LR frames of a window to the 2n + 1 HR frames of the same time span
(Sec. 3, Fig. 2): (B, n+1, h, w, 3) -> (B, 2n+1, 4h, 4w, 3). Its feature pyramid needs h and w
to be multiples of 4, so frames are reflect-padded up to the next multiple of 4 and the output
is cropped back to 4h x 4w. Frames too large for the accelerator are cut into spatial tiles
that overlap by `tile_overlap` LR pixels; every output pixel is taken from the tile in which it
lies furthest from a tile edge (the overlap is cropped, not blended), so for a model whose
receptive field is at most `tile_overlap / 2` LR pixels the tiled result equals the untiled one.
MEGAN's non-local blocks and LMGA see the whole tile, so for MEGAN itself tiling is an
approximation: use tiles as large as memory allows.
"""

from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from megan_jax import checkpointing, pretrained, progress
from megan_jax.data.pipeline import SCALE
from megan_jax.models import build_model

MULTIPLE = 4  # the model's h, w must be multiples of this


def _variables(params) -> dict:
  """Accepts a `params` tree or a full variables dict {"params": ...}."""
  if isinstance(params, Mapping) and "params" in params:
    return dict(params)
  return {"params": params}


def _cast(tree, dtype):
  """Casts the floating leaves of a tree to `dtype`."""
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, tree)


def tile_plan(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
  """Tiles covering [0, length) of a padded LR axis: (start, keep_from, keep_to), absolute.

  Starts are multiples of 4 (so the model's stride-4 grid is the same in every tile), consecutive
  tiles overlap by at least `overlap` and a pixel is kept from the tile whose edge is furthest:
  the seam lies in the middle of each overlap. `length` must be a multiple of 4.
  """
  if length <= tile:
    return [(0, 0, length)]
  stride = tile - overlap
  starts = list(range(0, length - tile, stride)) + [length - tile]
  seams = [(b + a + tile) // 2 for a, b in zip(starts[:-1], starts[1:])]
  bounds = [0] + seams + [length]
  return [(s, lo, hi) for s, lo, hi in zip(starts, bounds[:-1], bounds[1:])]


class _Compiled:
  """The jitted forward passes of one (model, dtype, frames); jax.jit compiles them once per input
  shape."""

  def __init__(self, model, dtype, frames=None):
    self.model, self.dtype, self.frames = model, dtype, frames
    self.num_traces = 0
    self.input_shapes = set()  # (shape, tile) of the calls made so far
    self.forward = jax.jit(self._forward)
    self.pad_forward = jax.jit(self._pad_forward)

  def _forward(self, variables, lr):
    self.num_traces += 1  # runs at trace time only
    x = lr if self.dtype is None else lr.astype(self.dtype)
    kwargs = {} if self.frames is None else {"frames": self.frames}
    return self.model.apply(variables, x, train=False, **kwargs).astype(jnp.float32)

  def _pad_forward(self, variables, lr):
    b, t, h, w, c = lr.shape  # (B, n+1, h, w, 3)
    pad = ((0, 0), (0, 0), (0, -h % MULTIPLE), (0, -w % MULTIPLE), (0, 0))
    y = self._forward(variables, jnp.pad(lr, pad, mode="reflect"))  # (B, T_out, 4Hp, 4Wp, 3)
    return y[:, :, :SCALE * h, :SCALE * w]


_CACHE: list = []  # recently used _Compiled, most recent last
_CACHE_SIZE = 8


def _compiled(model, dtype, frames=None) -> _Compiled:
  """Shares compilations between predict fns of equal models (e.g. each periodic validation)."""
  for entry in _CACHE:
    if (entry.dtype == dtype and entry.frames == frames and type(entry.model) is type(model)
        and entry.model == model):
      _CACHE.remove(entry)
      _CACHE.append(entry)
      return entry
  entry = _Compiled(model, dtype, frames)  # models hold a frozen ModelSpec: later config edits cannot reach it
  _CACHE.append(entry)
  del _CACHE[:-_CACHE_SIZE]
  return entry


class Predictor:
  """`lr` float32 (B, n+1, h, w, 3) in [0, 1] -> float32 numpy (B, 2n+1, 4h, 4w, 3), unclipped;
  with `frames` (indices of the 2n+1 outputs), only those: (B, len(frames), 4h, 4w, 3).

  The forward pass is jitted with train=False and compiled once per input shape (per tile shape
  when tiling), shared by all predictors of an equal model; `num_traces` counts compilations.
  """

  def __init__(self, model, params, *, dtype=None, tile: int | None = None, tile_overlap: int = 16,
               frames: tuple[int, ...] | None = None):
    if tile is not None:
      if tile <= 0 or tile % MULTIPLE:
        raise ValueError(f"predict: tile must be a positive multiple of {MULTIPLE}, got {tile}")
      if tile_overlap < 0 or tile_overlap % MULTIPLE or tile_overlap >= tile:
        raise ValueError(f"predict: tile_overlap must be a multiple of {MULTIPLE} in [0, tile={tile}), "
                         f"got {tile_overlap}")
    dtype = None if dtype is None else jnp.dtype(dtype)
    self.frames = None if frames is None else tuple(int(k) for k in frames)
    self._jit = _compiled(model, dtype, self.frames)
    variables = _variables(flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict)
                           else params)
    self.variables = variables if dtype is None else _cast(variables, dtype)
    self.tile, self.tile_overlap = tile, tile_overlap

  @property
  def num_traces(self) -> int:
    return self._jit.num_traces

  def __call__(self, lr) -> np.ndarray:
    if np.ndim(lr) != 5 or np.shape(lr)[-1] != 3:
      raise ValueError(f"predict: expected LR frames (B, n+1, h, w, 3), got shape {np.shape(lr)}")
    key = (np.shape(lr), self.tile)
    if key in self._jit.input_shapes:
      return self._run(lr)
    b, t, h, w, _ = np.shape(lr)  # (B, n+1, h, w, 3)
    which = "" if self.frames is None else f", output frames {list(self.frames)} only"
    with progress.compiling(f"the model for {t} LR frames of {w}x{h}, batch {b}{which}"):
      out = self._run(lr)
    self._jit.input_shapes.add(key)
    return out

  def _run(self, lr) -> np.ndarray:
    if self.tile is None:
      return np.asarray(self._jit.pad_forward(self.variables, jnp.asarray(lr, jnp.float32)))
    return self._tiled(np.asarray(lr, np.float32))

  def _tiled(self, lr: np.ndarray) -> np.ndarray:
    b, t, h, w, c = lr.shape  # (B, n+1, h, w, 3)
    pad = ((0, 0), (0, 0), (0, -h % MULTIPLE), (0, -w % MULTIPLE), (0, 0))
    x = np.pad(lr, pad, mode="reflect")  # (B, n+1, Hp, Wp, 3)
    hp, wp = x.shape[2:4]
    th, tw = min(self.tile, hp), min(self.tile, wp)
    out = None
    for y0, ylo, yhi in tile_plan(hp, th, self.tile_overlap):
      for x0, xlo, xhi in tile_plan(wp, tw, self.tile_overlap):
        y = np.asarray(self._jit.forward(self.variables, x[:, :, y0:y0 + th, x0:x0 + tw]))
        if out is None:  # (B, T_out, 4Hp, 4Wp, 3)
          out = np.empty(y.shape[:2] + (SCALE * hp, SCALE * wp, c), np.float32)
        out[:, :, SCALE * ylo:SCALE * yhi, SCALE * xlo:SCALE * xhi] = y[
            :, :, SCALE * (ylo - y0):SCALE * (yhi - y0), SCALE * (xlo - x0):SCALE * (xhi - x0)]
    return out[:, :, :SCALE * h, :SCALE * w]


def make_predict_fn(model, params, *, dtype=None, tile: int | None = None,
                    tile_overlap: int = 16, frames: tuple[int, ...] | None = None) -> Predictor:
  """Jitted eval-mode forward for (B, n+1, h, w, 3) float32 LR -> (B, 2n+1, 4h, 4w, 3) float32.

  Args:
    model: a flax module called as `model.apply(variables, x, train=False)`.
    params: its `params` tree, or the full variables dict.
    dtype: None keeps the parameters as they are; e.g. "bfloat16" casts the parameters and the
      input to that dtype (the output is float32).
    tile: None runs whole frames; else the LR tile size (a multiple of 4).
    tile_overlap: LR pixels shared by neighbouring tiles (a multiple of 4, < tile).
    frames: None outputs all 2n+1 frames; else the indices of the outputs to compute (the model
      takes `frames=`: MEGAN then reconstructs only those).
  """
  return Predictor(model, params, dtype=dtype, tile=tile, tile_overlap=tile_overlap,
                   frames=frames)


def _check_params(model, params, num_input_frames: int, where: str) -> None:
  """Raises naming `where` when `params` do not fit the architecture described by the config."""
  dummy = jnp.zeros((1, num_input_frames, 16, 16, 3), jnp.float32)
  keys = {"params": jax.random.key(0), "lmga": jax.random.key(1)}
  expected = jax.eval_shape(lambda: model.init(keys, dummy, train=False))["params"]
  flat = lambda tree: {jax.tree_util.keystr(p): tuple(np.shape(v))
                       for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  want, got = flat(expected), flat(_variables(params)["params"])
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()))[:5]
    raise ValueError(
        f"{where}: the checkpoint's parameters do not match config.model (the model config must be "
        f"the one used for training); first differences (path, shape): {diff}")


def restore_predict_fn(config, workdir: str, *, step: int | None = None, tile: int | None = None,
                       tile_overlap: int = 16, dtype=None,
                       frames: tuple[int, ...] | None = None) -> tuple[Predictor, int]:
  """Builds `config.model`, restores its parameters from `workdir` (latest or `step`).

  Returns (predict_fn, restored step). The architecture comes from the config file, the weights
  from the checkpoint; a mismatch raises a ValueError naming the workdir. Notes which parameters
  it uses (`pretrained.describe_checkpoint`).
  """
  model = build_model(config.model)
  params, step = checkpointing.restore_params(workdir, step)
  _check_params(model, params, config.data.num_input_frames, f"{workdir} (step {step})")
  progress.note(f"using {pretrained.describe_checkpoint(config, workdir, params, step)}")
  return make_predict_fn(model, params, dtype=dtype, tile=tile, tile_overlap=tile_overlap,
                         frames=frames), step
