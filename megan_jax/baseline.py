"""The "bicubic + frame blending" baseline of the STVSR tables.

Every LR input frame is upscaled with MATLAB-compatible bicubic `imresize`; every missing
in-between frame is the average of its two upscaled neighbours. Values are neither rounded nor
clipped (the metrics round to uint8). The evaluation scores `bicubic_blend_np`; the model's
`model.global_residual` adds `bicubic_blend_jnp`, the same kernel (`data.imresize.resize_matrix`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from megan_jax.data.imresize import imresize_jnp, imresize_np


def _check(shape: tuple, rank: int, fn: str, layout: str) -> None:
  if len(shape) != rank or shape[-1] != 3 or shape[-4] < 1:
    raise ValueError(f"baseline.{fn}: expected LR frames {layout} with C = 3, got shape {shape}")


def bicubic_blend_np(lr: np.ndarray, scale: int = 4) -> np.ndarray:
  """LR odd frames (T_in, h, w, 3) float in [0, 1] -> (2 T_in - 1, scale h, scale w, 3) float64."""
  lr = np.asarray(lr)
  _check(lr.shape, 4, "bicubic_blend_np", "(T_in, h, w, 3)")
  up = imresize_np(lr, scale)  # (T_in, H, W, 3)
  t, hh, ww, c = up.shape
  out = np.empty((2 * t - 1, hh, ww, c), dtype=np.float64)
  out[0::2] = up
  out[1::2] = 0.5 * (up[:-1] + up[1:])
  return out


def bicubic_blend_jnp(lr: jax.Array, scale: int = 4) -> jax.Array:
  """Batched, jit-able twin: (B, T_in, h, w, 3) -> (B, 2 T_in - 1, scale h, scale w, 3) float32."""
  _check(jnp.shape(lr), 5, "bicubic_blend_jnp", "(B, T_in, h, w, 3)")
  up = imresize_jnp(lr, scale)  # (B, T_in, H, W, 3)
  b, t, hh, ww, c = up.shape
  mid = 0.5 * (up[:, :-1] + up[:, 1:])  # (B, T_in - 1, H, W, 3)
  pairs = jnp.stack([up[:, :-1], mid], axis=2).reshape(b, 2 * (t - 1), hh, ww, c)
  return jnp.concatenate([pairs, up[:, -1:]], axis=1)
