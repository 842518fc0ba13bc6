"""Modulated deformable convolution (DCNv2), channels-last, in plain jax.numpy.

DCNv2 (Zhu et al., 2019), Eq. (1): for an output position p and the K = kh*kw taps p_k of the
kernel,

    y(p) = sum_k w_k . x(p + p_k + dp_k) . dm_k,

where dp_k is a learned offset and dm_k a learned modulation scalar. x at a fractional position is
read by bilinear interpolation, DCN (Dai et al., 2017), Eqs. (3)-(4): x(p) = sum_q G(q, p) x(q),
G(q, p) = g(q_y, p_y) g(q_x, p_x), g(a, b) = max(0, 1 - |a - b|), over the four integer corners q
around p; a corner outside the image contributes zero (torchvision `deform_conv2d` semantics).

This module is the reference implementation and the default (`impl="jnp"`). The sampling positions
of all taps are computed at once; the image is first rearranged so that one row holds a whole 2x2
neighbourhood (the four bilinear corners' channels, zero-padded at the border:
`corner_neighbourhoods`), so ONE gather fetches one 4*Cg row per tap and deformable group instead
of four Cg rows; the corner weights and the mask are folded into one weight per corner, and the
convolution is one (B*Ho*Wo, K*Cin) x (K*Cin, Cout) matmul. On the CPU the 2x2 rows made the
sampling about 10x faster forward and 4.5-7.5x faster with its gradient than gathering the corners
separately (docs/BENCHMARKS.md, "Deformable sampling").
"""

import functools

import jax
import jax.numpy as jnp

IMPLS = ("jnp", "pallas")


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"deform_conv2d: {name} must be an int >= {minimum}, got {value!r}")
  return value


def check_geometry(x, offset, mask, kernel_size, stride, padding, dilation, deformable_groups,
                   impl) -> tuple[int, int]:
  """Validates the shapes of a deformable sampling call and returns (Ho, Wo).

  Raises ValueError naming the offending argument and the shape it should have.
  """
  if impl not in IMPLS:
    raise ValueError(f"deform_conv2d: impl must be one of {IMPLS}, got {impl!r}")
  stride = _check_int("stride", stride, 1)
  padding = _check_int("padding", padding, 0)
  dilation = _check_int("dilation", dilation, 1)
  groups = _check_int("deformable_groups", deformable_groups, 1)
  kh, kw = kernel_size
  if x.ndim != 4:
    raise ValueError(f"deform_conv2d: x must have shape (B, H, W, Cin), got {tuple(x.shape)}")
  b, h, w, cin = x.shape
  if cin % groups:
    raise ValueError(f"deform_conv2d: x has Cin={cin} channels, not divisible by "
                     f"deformable_groups={groups}")
  ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
  wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
  if ho < 1 or wo < 1:
    raise ValueError(f"deform_conv2d: x of spatial size {(h, w)} is too small for a {kh}x{kw} "
                     f"kernel with padding={padding}, dilation={dilation}")
  k = kh * kw
  want = (b, ho, wo, 2 * groups * k)
  if tuple(offset.shape) != want:
    raise ValueError(f"deform_conv2d: offset must have shape (B, Ho, Wo, 2*G*kh*kw) = {want}, "
                     f"got {tuple(offset.shape)}")
  want = (b, ho, wo, groups * k)
  if mask is not None and tuple(mask.shape) != want:
    raise ValueError(f"deform_conv2d: mask must have shape (B, Ho, Wo, G*kh*kw) = {want}, "
                     f"got {tuple(mask.shape)}")
  return ho, wo


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


def deform_sample(x, offset, mask=None, *, kernel_size, stride=1, padding=1, dilation=1,
                  deformable_groups=1, impl="jnp"):
  """The bilinear-gather step of DCNv2: modulated samples x(p + p_k + dp_k) . dm_k.

  Args:
    x: (B, H, W, Cin) image; channel c belongs to deformable group c // (Cin / G).
    offset: (B, Ho, Wo, 2*G*kh*kw); for deformable group g and tap k = i*kw + j the channels
      ((g*kh*kw + k)*2 + 0, (g*kh*kw + k)*2 + 1) hold (dy, dx). Tap (i, j) of output (y, x)
      samples row y*stride - padding + i*dilation + dy, column x*stride - padding + j*dilation + dx.
    mask: (B, Ho, Wo, G*kh*kw) modulation (channel g*kh*kw + k), or None for ones.
    kernel_size: (kh, kw).
    impl: "jnp" (reference, default) or "pallas" (kernels.deform_conv_pallas).

  Returns:
    (B, Ho, Wo, kh*kw, Cin) columns in x.dtype: column [.., k, c] is the mask-weighted bilinear
    sample of channel c at tap k; corners outside the image contribute zero.
  """
  x, offset = jnp.asarray(x), jnp.asarray(offset)
  mask = None if mask is None else jnp.asarray(mask)
  check_geometry(x, offset, mask, kernel_size, stride, padding, dilation, deformable_groups, impl)
  if impl == "pallas":
    # Imported lazily so that the default path never loads Pallas.
    from kernels import deform_conv_pallas
    return deform_conv_pallas.deform_sample_pallas(
        x, offset, mask, kernel_size=kernel_size, stride=stride, padding=padding,
        dilation=dilation, deformable_groups=deformable_groups)
  return sample_jnp(x, offset, mask, kernel_size, stride, padding, dilation, deformable_groups)


def deform_conv2d(x, offset, mask, weight, bias=None, *, stride=1, padding=1, dilation=1,
                  deformable_groups=1, impl="jnp"):
  """Modulated deformable convolution, DCNv2 Eq. (1), NHWC (torchvision `deform_conv2d` semantics).

  Args:
    x: (B, H, W, Cin).
    offset: (B, Ho, Wo, 2*G*kh*kw); for deformable group g and tap k = i*kw + j the channels
      ((g*kh*kw + k)*2 + 0, (g*kh*kw + k)*2 + 1) hold (dy, dx). Tap (i, j) of output (y, x)
      samples row y*stride - padding + i*dilation + dy, column x*stride - padding + j*dilation + dx
      by bilinear interpolation; each of the four corners outside the image contributes zero.
    mask: (B, Ho, Wo, G*kh*kw) modulation dm_k (channel g*kh*kw + k), already passed through a
      sigmoid by the caller; None means ones (DCNv1).
    weight: (kh, kw, Cin, Cout) (HWIO, the flax Conv layout). bias: (Cout,) or None.
    stride, padding, dilation: ints, as in an ordinary convolution.
    deformable_groups: G; Cin must be divisible by G and channel c uses group c // (Cin / G).
    impl: "jnp" (reference, default) or "pallas" (Pallas bilinear gather, custom VJP).

  Returns:
    (B, Ho, Wo, Cout) in x.dtype. The compute dtype follows x (bfloat16 inputs are sampled and
    multiplied in bfloat16 with float32 accumulation); sampling coordinates are at least float32.
  """
  x, weight = jnp.asarray(x), jnp.asarray(weight)
  bias = None if bias is None else jnp.asarray(bias)
  if weight.ndim != 4:
    raise ValueError(f"deform_conv2d: weight must have shape (kh, kw, Cin, Cout), "
                     f"got {tuple(weight.shape)}")
  kh, kw, cin, cout = weight.shape
  if x.ndim == 4 and x.shape[-1] != cin:
    raise ValueError(f"deform_conv2d: weight must have shape (kh, kw, Cin={x.shape[-1]}, Cout), "
                     f"got {tuple(weight.shape)}")
  if bias is not None and tuple(bias.shape) != (cout,):
    raise ValueError(f"deform_conv2d: bias must have shape (Cout,) = ({cout},), "
                     f"got {tuple(bias.shape)}")
  cols = deform_sample(x, offset, mask, kernel_size=(kh, kw), stride=stride, padding=padding,
                       dilation=dilation, deformable_groups=deformable_groups, impl=impl)
  b, ho, wo = cols.shape[:3]  # (B, Ho, Wo, K, Cin)
  acc = jnp.promote_types(x.dtype, jnp.float32)
  out = jnp.dot(cols.reshape(b * ho * wo, kh * kw * cin),
                weight.astype(x.dtype).reshape(kh * kw * cin, cout),
                preferred_element_type=acc)  # (B*Ho*Wo, Cout)
  if bias is not None:
    out = out + bias.astype(acc)
  return out.reshape(b, ho, wo, cout).astype(x.dtype)
