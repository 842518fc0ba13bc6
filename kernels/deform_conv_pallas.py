"""Pallas bilinear-gather kernel for DCNv2 (the sampling step of Eq. (1)), with a custom VJP.

What is Pallas and what is not:
  * forward: one Pallas kernel over the grid (batch, output row). Each program reads the whole
    image of its batch element (a full-array block of x viewed as (H*W*G, Cin/G)) and the offset
    and mask row of its output row, computes the sampling positions of all taps, fetches the four
    bilinear corners with one gather and writes the (Wo, K, Cin) modulated columns.
  * backward, d offset and d mask: a second Pallas kernel on the same grid. Per tap it re-gathers
    the four corners v_q and forms <g, v_q>; then d mask = sum_q G_q <g, v_q> and
    d p_y = mask * sum_q (dG_q / dp_y) <g, v_q> (likewise for x) with G_q the bilinear weight of
    DCN Eq. (4). These are row-local, so every program writes only its own block.
  * backward, d x: NOT Pallas. It is a jnp scatter-add of mask * G_q * g into the four corners,
    because corners of different output rows collide and a per-row Pallas program could not
    write them race-free without atomics.
The matmul of deform_conv2d stays in jnp (XLA's dot).

On CPU the kernels run in Pallas interpret mode. On GPU they are compiled for the backend Pallas
picks; the data-dependent in-kernel gather is not lowered by Mosaic GPU and Pallas's Triton
backend is deprecated, so on GPU the jnp implementation (the default) is the one to use.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.deform_conv import bilinear_corners, corner_steps, tap_positions


class _Geometry(NamedTuple):
  kernel_size: tuple[int, int]
  stride: int
  padding: int
  dilation: int
  groups: int
  height: int
  width: int
  interpret: bool


def _row_corners(geom: _Geometry, offset_row, row):
  """Tap corners of output row `row`: offset_row (1, 1, Wo, 2*G*K) -> (1, 1, Wo, G, K, 4)."""
  coord = jnp.promote_types(offset_row.dtype, jnp.float32)
  wo = offset_row.shape[2]
  ys = (row * geom.stride - geom.padding).astype(coord)[None]  # (1,)
  xs = jnp.arange(wo, dtype=coord) * geom.stride - geom.padding  # (Wo,)
  py, px = tap_positions(offset_row[0], ys, xs, geom.kernel_size, geom.dilation, geom.groups)
  idx, wy, wx, valid = bilinear_corners(py, px, geom.height, geom.width, geom.groups)
  return idx[None], wy[None], wx[None], valid[None]


def _gather(x_ref, idx):
  """x_ref: (1, H*W*G, Cg) block; idx: (1, 1, Wo, G, K, 4) -> (1, 1, Wo, G, K, 4, Cg)."""
  img = x_ref[0]  # (H*W*G, Cg)
  return jnp.take(img, idx.reshape(-1), axis=0).reshape(*idx.shape, img.shape[-1])


def _forward_kernel(x_ref, off_ref, mask_ref, out_ref, *, geom: _Geometry):
  idx, wy, wx, valid = _row_corners(geom, off_ref[...], pl.program_id(1))  # (1, 1, Wo, G, K, 4)
  mask = mask_ref[...]  # (1, 1, Wo, G*K)
  acc = jnp.promote_types(out_ref.dtype, wy.dtype)
  weights = jnp.where(valid, wy * wx, 0) * mask.astype(wy.dtype).reshape(*idx.shape[:-1], 1)
  vals = _gather(x_ref, idx).astype(acc)  # (1, 1, Wo, G, K, 4, Cg)
  cols = jnp.sum(vals * weights.astype(acc)[..., None], axis=-2)  # (1, 1, Wo, G, K, Cg)
  cols = cols.transpose(0, 1, 2, 4, 3, 5).reshape(out_ref.shape)  # (1, 1, Wo, K, Cin)
  out_ref[...] = cols.astype(out_ref.dtype)


def _backward_kernel(x_ref, off_ref, mask_ref, g_ref, d_off_ref, d_mask_ref, *, geom: _Geometry):
  idx, wy, wx, valid = _row_corners(geom, off_ref[...], pl.program_id(1))  # (1, 1, Wo, G, K, 4)
  _, _, wo, groups, k, _ = idx.shape
  acc = wy.dtype
  g = g_ref[...].astype(acc).reshape(1, 1, wo, k, groups, -1).transpose(0, 1, 2, 4, 3, 5)
  vals = _gather(x_ref, idx).astype(acc)  # (1, 1, Wo, G, K, 4, Cg)
  gv = jnp.where(valid, jnp.sum(vals * g[..., None, :], axis=-1), 0)  # (1, 1, Wo, G, K, 4)
  mask = mask_ref[...].astype(acc).reshape(1, 1, wo, groups, k)
  step_y, step_x = corner_steps(acc)
  dwy = step_y * 2 - 1  # d g(q_y, p_y) / d p_y per corner: -1 or +1
  dwx = step_x * 2 - 1
  d_py = mask * jnp.sum(dwy * wx * gv, axis=-1)  # (1, 1, Wo, G, K)
  d_px = mask * jnp.sum(wy * dwx * gv, axis=-1)
  d_off_ref[...] = jnp.stack([d_py, d_px], axis=-1).reshape(d_off_ref.shape).astype(d_off_ref.dtype)
  d_mask_ref[...] = jnp.sum(wy * wx * gv, axis=-1).reshape(d_mask_ref.shape).astype(
      d_mask_ref.dtype)


def _specs(geom: _Geometry, x_shape, offset_shape):
  """BlockSpecs for grid (b, row): x whole per batch element, offset/mask one output row."""
  _, h, w, cin = x_shape
  _, _, wo, c_off = offset_shape
  x_spec = pl.BlockSpec((1, h * w * geom.groups, cin // geom.groups), lambda b, r: (b, 0, 0))
  off_spec = pl.BlockSpec((1, 1, wo, c_off), lambda b, r: (b, r, 0, 0))
  mask_spec = pl.BlockSpec((1, 1, wo, c_off // 2), lambda b, r: (b, r, 0, 0))
  k = geom.kernel_size[0] * geom.kernel_size[1]
  cols_spec = pl.BlockSpec((1, 1, wo, k, cin), lambda b, r: (b, r, 0, 0, 0))
  return x_spec, off_spec, mask_spec, cols_spec


def _flat(geom: _Geometry, x):
  b, h, w, cin = x.shape  # (B, H, W, Cin)
  return x.reshape(b, h * w * geom.groups, cin // geom.groups)  # (B, H*W*G, Cg)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sample(geom: _Geometry, x, offset, mask):
  b, _, _, cin = x.shape
  _, ho, wo, _ = offset.shape
  x_spec, off_spec, mask_spec, cols_spec = _specs(geom, x.shape, offset.shape)
  k = geom.kernel_size[0] * geom.kernel_size[1]
  return pl.pallas_call(
      functools.partial(_forward_kernel, geom=geom),
      out_shape=jax.ShapeDtypeStruct((b, ho, wo, k, cin), x.dtype),
      grid=(b, ho),
      in_specs=[x_spec, off_spec, mask_spec],
      out_specs=cols_spec,
      interpret=geom.interpret,
  )(_flat(geom, x), offset, mask)


def _sample_fwd(geom: _Geometry, x, offset, mask):
  return _sample(geom, x, offset, mask), (x, offset, mask)


def _grad_x(geom: _Geometry, x, offset, mask, g):
  """d x: scatter-add of mask * G_q * g into the four corners (jnp, not Pallas)."""
  b, h, w, cin = x.shape
  _, ho, wo, _ = offset.shape
  k = geom.kernel_size[0] * geom.kernel_size[1]
  coord = jnp.promote_types(offset.dtype, jnp.float32)
  ys = jnp.arange(ho, dtype=coord) * geom.stride - geom.padding
  xs = jnp.arange(wo, dtype=coord) * geom.stride - geom.padding
  py, px = tap_positions(offset, ys, xs, geom.kernel_size, geom.dilation, geom.groups)
  idx, wy, wx, valid = bilinear_corners(py, px, h, w, geom.groups)  # (B, Ho, Wo, G, K, 4)
  weights = jnp.where(valid, wy * wx, 0) * mask.astype(coord).reshape(b, ho, wo, geom.groups, k, 1)
  acc = jnp.promote_types(x.dtype, coord)
  g = g.astype(acc).reshape(b, ho, wo, k, geom.groups, -1).transpose(0, 1, 2, 4, 3, 5)
  contrib = g[..., None, :] * weights.astype(acc)[..., None]  # (B, Ho, Wo, G, K, 4, Cg)
  cg = cin // geom.groups
  scatter = jax.vmap(lambda rows, c: jnp.zeros((h * w * geom.groups, cg), acc).at[rows].add(
      c, mode="promise_in_bounds"))
  dx = scatter(idx.reshape(b, -1), contrib.reshape(b, -1, cg))  # (B, H*W*G, Cg)
  return dx.reshape(x.shape).astype(x.dtype)


def _sample_bwd(geom: _Geometry, residuals, g):
  x, offset, mask = residuals
  b, ho = offset.shape[:2]
  x_spec, off_spec, mask_spec, cols_spec = _specs(geom, x.shape, offset.shape)
  d_offset, d_mask = pl.pallas_call(
      functools.partial(_backward_kernel, geom=geom),
      out_shape=(jax.ShapeDtypeStruct(offset.shape, offset.dtype),
                 jax.ShapeDtypeStruct(mask.shape, mask.dtype)),
      grid=(b, ho),
      in_specs=[x_spec, off_spec, mask_spec, cols_spec],
      out_specs=(off_spec, mask_spec),
      interpret=geom.interpret,
  )(_flat(geom, x), offset, mask, g)
  return _grad_x(geom, x, offset, mask, g), d_offset, d_mask


_sample.defvjp(_sample_fwd, _sample_bwd)


def deform_sample_pallas(x, offset, mask, *, kernel_size, stride, padding, dilation,
                         deformable_groups, interpret=None):
  """Pallas version of `kernels.deform_conv.deform_sample` (same arguments and result).

  Shapes are assumed validated by the caller (`deform_sample` / `deform_conv2d`). interpret=None
  means interpret mode exactly when the default JAX backend is the CPU.
  """
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  if mask is None:
    mask = jnp.ones((*offset.shape[:-1], offset.shape[-1] // 2), offset.dtype)
  geom = _Geometry(tuple(kernel_size), stride, padding, dilation, deformable_groups,
                   x.shape[1], x.shape[2], bool(interpret))
  return _sample(geom, x, offset, mask)
