"""Pallas bilinear-gather kernel for DCNv2 (the sampling step of Eq. (1)), with a custom VJP.

What is Pallas and what is not:
  * forward: one Pallas kernel over the grid (batch b, output row y, block of BW output columns).
    Each program loops over the G*K (deformable group g, tap k) pairs; for each it loads the
    (BW,) dy, dx and mask of its columns, computes the four bilinear corners of DCN Eqs. (3)-(4),
    gathers each corner's (BW, Cgp) channels of group g from x viewed as (B, H*W, Cin) and stores
    the weighted sum of the four into the output at [b, y, columns, k, g, :].
  * backward, d offset and d mask: a second Pallas kernel on the same grid and loop. Per (g, k) it
    re-gathers the four corners v_q and forms <g, v_q>; then d mask = sum_q G_q <g, v_q> and
    d p_y = mask * sum_q (dG_q / dp_y) <g, v_q> (likewise for x) with G_q the bilinear weight of
    DCN Eq. (4). Every program writes only its own columns.
  * backward, d x: NOT Pallas. It is the gradient of the jnp sampling (`sample_jnp`), a
    scatter-add of mask * G_q * g into the four corners, because corners of different output
    positions collide, and Pallas programs could only add into them with atomics, whose
    summation order (hence result) is not deterministic.
The matmul of deform_conv2d stays in jnp (XLA's dot).

Backend: the kernels are written for Pallas's Triton backend (pallas_call with
`jax.experimental.pallas.triton.CompilerParams`). Mosaic GPU, the default Pallas backend on a GPU,
has no data-dependent gather; Triton lowers a load with integer-array indexers to pointer
arithmetic, i.e. a gather (`_gather`). The Pallas changelog deprecates the Triton backend as of
JAX 0.11.0 ("will be removed in a future version"), so this kernel is the experiment that tells
whether a hand-written gather is worth porting when it goes. Triton requires every array in a
kernel (loads, intermediates, stores) to have a power-of-2 size; the kernels meet this by
construction:
  * the refs are whole arrays indexed by hand (no BlockSpec blocks, whose shapes would contain Wo,
    K or G*K);
  * the output columns are handled in blocks of BW, a power of 2 (at most 32, and BW * Cgp at most
    4096 unless Cgp alone is larger); columns past Wo in the last block are masked out of every
    load and store (`col_ok`);
  * the Cg = Cin / G channels of a group are handled as Cgp = next_power_of_2(Cg) lanes. The
    gather from x reads group g's last channel again in the lanes past Cg (`_channels`), so x is
    never padded. The output is laid out (B, Ho, Wo, K, G, Cgp) and the wrapper slices it back
    to Cg lanes, dropping those repeats; the backward kernel gets the cotangent zero-padded to
    Cgp lanes, so the repeats add nothing to d offset and d mask. (A copy each, only when Cg is
    not a power of 2. Storing into a (.., Cin) array instead would need a (BW, Cgp) slice of
    group g's channels, which runs past Cin for the last group: Pallas rejects that slice.)
  * (g, k) is the index of a fori_loop, so neither G nor K is an array dimension.
A corner outside the image is a masked load with other=0, so it contributes zero.
The same kernels run in Pallas interpret mode on the CPU, which takes integer scalar indices that
all have the same dtype (hence the explicit int32 ones) and no mixing of integer-array indexers
with slices (hence the gather indexes channels by an array too). Interpret mode drops the part of
a store that falls past an array dimension, so the CPU tests would not catch a store missing its
`col_ok` mask; on a GPU that store would overwrite the next output row.

Status: the kernels lower for CUDA through Triton (checked on the CPU by cross-lowering in
tests/test_deform_conv.py), but they have NOT been compiled by Triton nor run on a GPU: there
was none. Their values and gradients are tested in interpret mode on the CPU, which is what
interpret=None selects there. On a TPU they do not lower (Triton is GPU-only). The jnp
implementation stays the default (`impl="jnp"`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from megan_jax.kernels.sampling import sample_jnp

_MAX_COLUMNS = 32  # largest BW, the number of output columns one program handles
_MAX_TILE = 4096  # largest BW * Cgp, the size of one gathered (BW, Cgp) tile


class _Geometry(NamedTuple):
  kernel_size: tuple[int, int]
  stride: int
  padding: int
  dilation: int
  groups: int
  height: int
  width: int
  block_w: int  # BW, a power of 2
  lanes: int  # Cgp = next_pow2(Cin / G)
  interpret: bool


def _columns(geom: _Geometry, wo: int):
  """Start, indices (BW,) and in-range flags (BW,) of this program's output columns."""
  start = pl.program_id(2) * geom.block_w
  cols = start + jnp.arange(geom.block_w, dtype=jnp.int32)  # (BW,)
  return start, cols, cols < wo


def _channels(geom: _Geometry, cg: int, g):
  """Channels (Cgp,) of x read by the lanes of group g; lanes past Cg repeat its last channel."""
  lane = jnp.arange(geom.lanes, dtype=jnp.int32)  # (Cgp,)
  return g * cg + jnp.minimum(lane, cg - 1)


def _for_each_tap(geom: _Geometry, body):
  """Runs body(g, k) for every deformable group g and tap k (int32 scalars, t = g*K + k).

  A loop rather than a static unroll: the body is compiled once (interpret mode compiles an
  unrolled G*K*4-gather body many times slower, and on the GPU it would bloat the kernel).
  """
  kk = geom.kernel_size[0] * geom.kernel_size[1]

  def step(t, carry):
    body(t // kk, t % kk)
    return carry

  jax.lax.fori_loop(jnp.int32(0), jnp.int32(geom.groups * kk), step, 0)


def _tap_corners(geom: _Geometry, dy, dx, row, cols, k):
  """The four bilinear corners of tap k for the output columns (DCN Eqs. (3)-(4)).

  dy, dx: (BW,) offsets of tap k; row: scalar output row; cols: (BW,) output columns.
  Returns four (rows, wy, wx, dwy, dwx, valid): rows (BW,) int32 rows y*W + x of x viewed as
  (H*W, Cin), clipped into the image; wy, wx (BW,) the factors g(q_y, p_y), g(q_x, p_x) of the
  corner weight; dwy, dwx the Python scalars d g / d p (-1 or +1); valid (BW,) whether the corner
  lies inside the image.
  """
  kw = geom.kernel_size[1]
  i, j = k // kw, k % kw
  py = (row * geom.stride - geom.padding + i * geom.dilation).astype(dy.dtype) + dy  # (BW,)
  px = (cols * geom.stride - geom.padding + j * geom.dilation).astype(dx.dtype) + dx
  y0 = jnp.floor(py)
  x0 = jnp.floor(px)
  ly = py - y0
  lx = px - x0
  corners = []
  for step_y, step_x in ((0, 0), (0, 1), (1, 0), (1, 1)):  # the order of corner_neighbourhoods
    qy = y0 + step_y
    qx = x0 + step_x
    valid = (qy >= 0) & (qy <= geom.height - 1) & (qx >= 0) & (qx <= geom.width - 1)
    qy = jnp.clip(qy, 0, geom.height - 1).astype(jnp.int32)
    qx = jnp.clip(qx, 0, geom.width - 1).astype(jnp.int32)
    corners.append((qy * geom.width + qx, ly if step_y else 1 - ly, lx if step_x else 1 - lx,
                    2 * step_y - 1, 2 * step_x - 1, valid))
  return corners


def _load_tap(geom: _Geometry, off_ref, mask_ref, b, row, start, col_ok, g, k, coord):
  """(BW,) dy, dx and mask of tap k, group g; zero in the columns past Wo."""
  t = g * geom.kernel_size[0] * geom.kernel_size[1] + k
  cols = pl.ds(start, geom.block_w)
  dy = plgpu.load(off_ref.at[b, row, cols, 2 * t], mask=col_ok, other=0).astype(coord)  # (BW,)
  dx = plgpu.load(off_ref.at[b, row, cols, 2 * t + 1], mask=col_ok, other=0).astype(coord)
  m = plgpu.load(mask_ref.at[b, row, cols, t], mask=col_ok, other=0).astype(coord)
  return dy, dx, m


def _gather(x_ref, b, rows, chans, ok):
  """x_ref: (B, H*W, Cin); rows (BW,), chans (Cgp,), ok (BW, Cgp) -> (BW, Cgp), 0 where not ok."""
  return plgpu.load(x_ref.at[b, rows[:, None], chans[None, :]], mask=ok, other=0)


def _forward_kernel(x_ref, off_ref, mask_ref, out_ref, *, geom: _Geometry):
  b, row = pl.program_id(0), pl.program_id(1)
  wo = out_ref.shape[2]  # out: (B, Ho, Wo, K, G, Cgp)
  cg = x_ref.shape[-1] // geom.groups
  coord = jnp.promote_types(off_ref.dtype, jnp.float32)
  acc_t = jnp.promote_types(out_ref.dtype, coord)
  start, cols, col_ok = _columns(geom, wo)
  col_tile = jnp.broadcast_to(col_ok[:, None], (geom.block_w, geom.lanes))  # (BW, Cgp)
  lanes = pl.ds(jnp.int32(0), geom.lanes)  # an int32 start, like the other indices

  def tap(g, k):
    chans = _channels(geom, cg, g)
    dy, dx, m = _load_tap(geom, off_ref, mask_ref, b, row, start, col_ok, g, k, coord)
    acc = jnp.zeros((geom.block_w, geom.lanes), acc_t)  # (BW, Cgp)
    for rows, wy, wx, _, _, valid in _tap_corners(geom, dy, dx, row, cols, k):
      vals = _gather(x_ref, b, rows, chans, col_tile & valid[:, None])  # (BW, Cgp)
      acc += vals.astype(acc_t) * (wy * wx * m).astype(acc_t)[:, None]
    plgpu.store(out_ref.at[b, row, pl.ds(start, geom.block_w), k, g, lanes],
                acc.astype(out_ref.dtype), mask=col_tile)

  _for_each_tap(geom, tap)


def _backward_kernel(x_ref, off_ref, mask_ref, cot_ref, d_off_ref, d_mask_ref, *,
                     geom: _Geometry):
  b, row = pl.program_id(0), pl.program_id(1)
  _, _, wo, kk, _, _ = cot_ref.shape  # (B, Ho, Wo, K, G, Cgp)
  cg = x_ref.shape[-1] // geom.groups
  coord = jnp.promote_types(off_ref.dtype, jnp.float32)
  start, cols, col_ok = _columns(geom, wo)
  col_block = pl.ds(start, geom.block_w)
  col_tile = jnp.broadcast_to(col_ok[:, None], (geom.block_w, geom.lanes))  # (BW, Cgp)
  lanes = pl.ds(jnp.int32(0), geom.lanes)

  def tap(g, k):
    chans = _channels(geom, cg, g)
    dy, dx, m = _load_tap(geom, off_ref, mask_ref, b, row, start, col_ok, g, k, coord)
    cot = plgpu.load(cot_ref.at[b, row, col_block, k, g, lanes], mask=col_tile,
                     other=0).astype(coord)  # (BW, Cgp)
    d_py = d_px = d_m = jnp.zeros((geom.block_w,), coord)  # (BW,)
    for rows, wy, wx, dwy, dwx, valid in _tap_corners(geom, dy, dx, row, cols, k):
      vals = _gather(x_ref, b, rows, chans, col_tile & valid[:, None])  # (BW, Cgp)
      gv = jnp.sum(vals.astype(coord) * cot, axis=1)  # (BW,) <g, v_q>, 0 outside the image
      d_py += dwy * wx * gv
      d_px += wy * dwx * gv
      d_m += wy * wx * gv
    t = g * kk + k
    plgpu.store(d_off_ref.at[b, row, col_block, 2 * t], (m * d_py).astype(d_off_ref.dtype),
                mask=col_ok)
    plgpu.store(d_off_ref.at[b, row, col_block, 2 * t + 1], (m * d_px).astype(d_off_ref.dtype),
                mask=col_ok)
    plgpu.store(d_mask_ref.at[b, row, col_block, t], d_m.astype(d_mask_ref.dtype), mask=col_ok)

  _for_each_tap(geom, tap)


def _call(geom: _Geometry, kernel, out_shape, batch, ho, wo, *args):
  """pallas_call over the grid (B, Ho, ceil(Wo / BW)) with whole-array refs, Triton on GPU.

  num_warps: one warp (32 threads) per 256 elements of a (BW, Cgp) tile, between 1 and 8.
  """
  tile = geom.block_w * geom.lanes
  return pl.pallas_call(
      functools.partial(kernel, geom=geom),
      out_shape=out_shape,
      grid=(batch, ho, pl.cdiv(wo, geom.block_w)),
      compiler_params=plgpu.CompilerParams(num_warps=min(8, max(1, tile // 256))),
      interpret=geom.interpret,
  )(*args)


def _flat(x):
  b, h, w, cin = x.shape  # (B, H, W, Cin)
  return x.reshape(b, h * w, cin)  # (B, H*W, Cin): row y*W + x


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sample(geom: _Geometry, x, offset, mask):
  b, _, _, cin = x.shape
  _, ho, wo, _ = offset.shape
  k = geom.kernel_size[0] * geom.kernel_size[1]
  out_shape = jax.ShapeDtypeStruct((b, ho, wo, k, geom.groups, geom.lanes), x.dtype)
  cols = _call(geom, _forward_kernel, out_shape, b, ho, wo, _flat(x), offset, mask)
  cols = cols[..., :cin // geom.groups]  # (B, Ho, Wo, K, G, Cg); a no-op when Cg == Cgp
  return cols.reshape(b, ho, wo, k, cin)


def _sample_fwd(geom: _Geometry, x, offset, mask):
  return _sample(geom, x, offset, mask), (x, offset, mask)


def _grad_x(geom: _Geometry, x, offset, mask, g):
  """d x: the transpose of the jnp sampling, i.e. a scatter-add of mask * G_q * g into the corners."""
  sample = lambda x: sample_jnp(x, offset, mask, geom.kernel_size, geom.stride, geom.padding,
                                geom.dilation, geom.groups)
  return jax.vjp(sample, x)[1](g)[0]


def _sample_bwd(geom: _Geometry, residuals, g):
  x, offset, mask = residuals
  b, ho, wo, _ = offset.shape
  cg = x.shape[-1] // geom.groups
  k = geom.kernel_size[0] * geom.kernel_size[1]
  # (B, Ho, Wo, K, G, Cgp), zero lanes past Cg; a no-op when Cg == Cgp
  g_lanes = jnp.pad(g.reshape(b, ho, wo, k, geom.groups, cg),
                    [(0, 0)] * 5 + [(0, geom.lanes - cg)])
  out_shape = (jax.ShapeDtypeStruct(offset.shape, offset.dtype),
               jax.ShapeDtypeStruct(mask.shape, mask.dtype))
  d_offset, d_mask = _call(geom, _backward_kernel, out_shape, b, ho, wo, _flat(x), offset, mask,
                           g_lanes)
  return _grad_x(geom, x, offset, mask, g), d_offset, d_mask


_sample.defvjp(_sample_fwd, _sample_bwd)


def deform_sample_pallas(x, offset, mask, *, kernel_size, stride, padding, dilation,
                         deformable_groups, interpret=None):
  """Pallas version of `deform_conv.deform_sample` (same arguments and result).

  Shapes are assumed validated by the caller (`deform_sample` / `deform_conv2d`). interpret=None
  means interpret mode exactly when the default JAX backend is the CPU; otherwise the kernels are
  lowered through Pallas's Triton backend, i.e. for a GPU.
  """
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  if mask is None:
    mask = jnp.ones((*offset.shape[:-1], offset.shape[-1] // 2), offset.dtype)
  lanes = pl.next_power_of_2(x.shape[-1] // deformable_groups)
  block_w = min(pl.next_power_of_2(offset.shape[2]), _MAX_COLUMNS, max(1, _MAX_TILE // lanes))
  geom = _Geometry(tuple(kernel_size), stride, padding, dilation, deformable_groups,
                   x.shape[1], x.shape[2], block_w, lanes, bool(interpret))
  return _sample(geom, x, offset, mask)
