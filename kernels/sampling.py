"""The bilinear sampling of DCNv2 Eq. (1) in plain jax.numpy: the reference and default (`impl="jnp"`).

The sampling positions of all taps are computed at once; the image is first rearranged so that one
row holds a whole 2x2 neighbourhood (the four bilinear corners' channels, zero-padded at the border:
`corner_neighbourhoods`), so ONE gather fetches one 4*Cg row per tap and deformable group instead
of four Cg rows; the corner weights and the mask are folded into one weight per corner. On the CPU
the 2x2 rows made the sampling about 10x faster forward and 4.5-7.5x faster with its gradient than
gathering the corners separately (docs/BENCHMARKS.md, "Deformable sampling").
"""

import functools

import jax
import jax.numpy as jnp


def tap_positions(offset, ys, xs, kernel_size, dilation, groups):
  """Sampling positions p + p_k + dp_k of every tap (the argument of x in DCNv2 Eq. (1)).

  offset: (..., R, Wo, 2*G*K), channel ((g*K + k)*2 + {0: dy, 1: dx}), k = i*kw + j.
  ys: (R,) top-left rows y*stride - padding of the output rows; xs: (Wo,) likewise for columns.
  Returns py, px: (..., R, Wo, G, K) in the dtype of ys.
  """
  kh, kw = kernel_size
  off = offset.astype(ys.dtype).reshape(*offset.shape[:-1], groups, kh * kw, 2)
  tap_y = (jnp.arange(kh * kw) // kw * dilation).astype(ys.dtype)  # (K,) i*dilation
  tap_x = (jnp.arange(kh * kw) % kw * dilation).astype(ys.dtype)  # (K,) j*dilation
  py = ys[:, None, None, None] + tap_y + off[..., 0]
  px = xs[None, :, None, None] + tap_x + off[..., 1]
  return py, px


def corner_neighbourhoods(x, groups):
  """Every 2x2 neighbourhood of the zero-padded image, as gather rows.

  x: (B, H, W, Cin). Returns (B, (H+1)*(W+1)*G, 4*Cg): row ((y0+1)*(W+1) + x0+1)*G + g holds the
  group-g channels of the corners (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1) for y0 in
  [-1, H-1], x0 in [-1, W-1], zeros where a corner is outside the image (DCN's zero contribution).
  """
  b, h, w, cin = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, h + 2, w + 2, groups, cin // groups)
  quad = jnp.stack([xp[:, :-1, :-1], xp[:, :-1, 1:], xp[:, 1:, :-1], xp[:, 1:, 1:]], 4)
  return quad.reshape(b, (h + 1) * (w + 1) * groups, 4 * (cin // groups))  # (B, rows, 4*Cg)


@functools.partial(jax.checkpoint, static_argnums=(3, 4, 5, 6, 7))
def sample_jnp(x, offset, mask, kernel_size, stride, padding, dilation, groups):
  """`deform_sample` with impl="jnp", on arguments the caller has validated: (B, Ho, Wo, K, Cin).

  Rematerialised (`jax.checkpoint`): the backward pass gathers again instead of keeping the
  gathered (B, Ho, Wo, G, K, 4*Cg) neighbourhoods and their corner weights, so the residuals are
  x, offset and mask alone (like the Pallas kernel's). That cut the estimated memory of a MEGAN
  train step at batch 16 from 34 to 19 GiB and made it faster on the CPU (docs/BENCHMARKS.md,
  "Rematerialised sampling").
  """
  b, h, w, cin = x.shape  # (B, H, W, Cin)
  _, ho, wo, _ = offset.shape  # (B, Ho, Wo, 2*G*K)
  k = kernel_size[0] * kernel_size[1]
  cg = cin // groups
  coord = jnp.promote_types(offset.dtype, jnp.float32)
  ys = jnp.arange(ho, dtype=coord) * stride - padding
  xs = jnp.arange(wo, dtype=coord) * stride - padding
  py, px = tap_positions(offset, ys, xs, kernel_size, dilation, groups)  # (B, Ho, Wo, G, K)
  y0, x0 = jnp.floor(py), jnp.floor(px)
  ly, lx = py - y0, px - x0
  # A position with y0 < -1 or y0 > H-1 (likewise x0) has all four corners outside the image.
  inside = (y0 >= -1) & (y0 <= h - 1) & (x0 >= -1) & (x0 <= w - 1)
  row = jnp.clip(y0, -1, h - 1).astype(jnp.int32) + 1
  col = jnp.clip(x0, -1, w - 1).astype(jnp.int32) + 1
  idx = (row * (w + 1) + col) * groups + jnp.arange(groups, dtype=jnp.int32)[:, None]
  # G(q, p) of DCN Eq. (4) for the corners in corner_neighbourhoods' order: (B, Ho, Wo, G, K, 4)
  weights = jnp.stack([(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], -1)
  weights = jnp.where(inside[..., None], weights, 0)
  if mask is not None:
    weights = weights * mask.astype(coord).reshape(b, ho, wo, groups, k, 1)
  gather = jax.vmap(lambda img, rows: img.at[rows].get(mode="promise_in_bounds"))
  vals = gather(corner_neighbourhoods(x, groups), idx.reshape(b, -1))  # (B, Ho*Wo*G*K, 4*Cg)
  vals = vals.reshape(b, ho, wo, groups, k, 4, cg)
  acc = jnp.promote_types(x.dtype, coord)
  cols = jnp.einsum("bhwgkqc,bhwgkq->bhwkgc", vals.astype(acc), weights.astype(acc))
  return cols.reshape(b, ho, wo, k, cin).astype(x.dtype)  # (B, Ho, Wo, K, Cin)
