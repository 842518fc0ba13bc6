"""MATLAB-compatible bicubic `imresize` in numpy and jnp.

The STVSR benchmarks (Zooming Slow-Mo, MEGAN) make their LR frames with MATLAB's
`imresize(img, 1/4, 'bicubic')`, and the bicubic baseline upscales with `imresize(img, 4)`.
Both are reproduced here:

- cubic kernel with a = -0.5 (Keys);
- when shrinking (scale < 1) the kernel is stretched by 1/scale (antialiasing);
- the weights of every output pixel are normalised to sum to one;
- borders by symmetric reflection of the indices (MATLAB's index mirroring);
- output size ceil(size * scale), sampling positions u = x / scale + (1 - 1 / scale) / 2.

Each axis is a linear map, precomputed once per (size, scale) as a dense (out, in) matrix and
applied as a matmul along H (axis -3), then along W (axis -2), of (..., H, W, C) arrays.
Nothing is rounded or clipped.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_KERNEL_WIDTH = 4.0  # support of the cubic kernel, [-2, 2]


def _cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
  ax = np.abs(x)
  ax2, ax3 = ax * ax, ax * ax * ax
  inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
  outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
  return inner + outer


def output_size(in_len: int, scale: float) -> int:
  """MATLAB's output length, ceil(in_len * scale)."""
  return int(math.ceil(in_len * scale))


@functools.lru_cache(maxsize=64)
def resize_matrix(in_len: int, scale: float) -> np.ndarray:
  """The (out_len, in_len) float64 matrix of one axis of MATLAB's bicubic `imresize`.

  Row i holds the normalised kernel weights of output pixel i, with out-of-range taps
  folded back onto the image by symmetric reflection (MATLAB's `contributions`).
  The returned array is cached and read-only.
  """
  out_len = output_size(in_len, scale)
  width = _KERNEL_WIDTH / scale if scale < 1 else _KERNEL_WIDTH
  x = np.arange(1, out_len + 1, dtype=np.float64)  # 1-based output coordinates
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # (out,) positions in input coordinates
  left = np.floor(u - width / 2.0)
  taps = int(math.ceil(width)) + 2
  idx = left[:, None] + np.arange(taps)[None, :]  # (out, taps) 1-based input indices
  dist = u[:, None] - idx
  weights = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
  weights = weights / weights.sum(axis=1, keepdims=True)
  mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
  cols = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]  # (out, taps) 0-based
  matrix = np.zeros((out_len, in_len), dtype=np.float64)
  np.add.at(matrix, (np.repeat(np.arange(out_len), taps), cols.ravel()), weights.ravel())
  matrix.setflags(write=False)
  return matrix


def _check(img_shape: tuple, scale: float, fn: str) -> None:
  try:
    ok = math.isfinite(float(scale)) and float(scale) > 0
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"imresize.{fn}: scale must be a positive finite number, got {scale!r}")
  if len(img_shape) < 2:
    raise ValueError(
        f"imresize.{fn}: expected a (H, W) or (..., H, W, C) image, got shape {tuple(img_shape)}")
  h, w = img_shape[:2] if len(img_shape) == 2 else img_shape[-3:-1]
  if h < 1 or w < 1 or output_size(h, scale) < 1 or output_size(w, scale) < 1:
    raise ValueError(f"imresize.{fn}: cannot resize a {h}x{w} image by {scale}")


def imresize_np(img: np.ndarray, scale: float) -> np.ndarray:
  """MATLAB `imresize(img, scale, 'bicubic')` on axes (-3, -2) of a (..., H, W, C) array.

  A 2-D (H, W) array is treated as one grayscale image. uint8 (or any) input is converted
  to float64 first; the float64 result is neither rounded nor clipped.
  Returns (..., ceil(H * scale), ceil(W * scale), C).
  """
  img = np.asarray(img)
  _check(img.shape, scale, "imresize_np")
  if img.ndim == 2:
    return imresize_np(img[..., None], scale)[..., 0]
  x = img.astype(np.float64, copy=False)
  *lead, h, w, c = x.shape  # (..., H, W, C)
  mh, mw = resize_matrix(h, float(scale)), resize_matrix(w, float(scale))
  n = math.prod(lead)
  y = np.matmul(mh, x.reshape(n, h, w * c))  # (N, Ho, W*C)
  ho = mh.shape[0]
  y = y.reshape(n * ho, w, c).transpose(0, 2, 1)  # (N*Ho, C, W)
  y = np.matmul(y, mw.T)  # (N*Ho, C, Wo)
  return np.ascontiguousarray(y.transpose(0, 2, 1)).reshape(*lead, ho, mw.shape[0], c)


def imresize_jnp(img: jax.Array, scale: float) -> jax.Array:
  """jnp twin of `imresize_np`, jit-able (`scale` must be static).

  The axis matrices are numpy constants built at trace time. Computes in float32
  (float64 only for float64 input, i.e. with x64 enabled); integer input is cast first.
  """
  _check(jnp.shape(img), scale, "imresize_jnp")
  if jnp.ndim(img) == 2:
    return imresize_jnp(img[..., None], scale)[..., 0]
  dtype = jnp.float64 if jnp.asarray(img).dtype == jnp.float64 else jnp.float32
  x = jnp.asarray(img).astype(dtype)
  h, w = x.shape[-3], x.shape[-2]  # (..., H, W, C)
  mh = jnp.asarray(resize_matrix(h, float(scale)), dtype)  # (Ho, H)
  mw = jnp.asarray(resize_matrix(w, float(scale)), dtype)  # (Wo, W)
  hi = jax.lax.Precision.HIGHEST
  y = jnp.einsum("oh,...hwc->...owc", mh, x, precision=hi)  # (..., Ho, W, C)
  return jnp.einsum("pw,...owc->...opc", mw, y, precision=hi)  # (..., Ho, Wo, C)
