"""Modulated deformable convolution (DCNv2), channels-last, in plain jax.numpy.

DCNv2 (Zhu et al., 2019), Eq. (1): for an output position p and the K = kh*kw taps p_k of the
kernel,

    y(p) = sum_k w_k . x(p + p_k + dp_k) . dm_k,

where dp_k is a learned offset and dm_k a learned modulation scalar. x at a fractional position is
read by bilinear interpolation, DCN (Dai et al., 2017), Eqs. (3)-(4): x(p) = sum_q G(q, p) x(q),
G(q, p) = g(q_y, p_y) g(q_x, p_x), g(a, b) = max(0, 1 - |a - b|), over the four integer corners q
around p; a corner outside the image contributes zero (torchvision `deform_conv2d` semantics).

This module validates the arguments and dispatches the sampling to `sampling.sample_jnp` (the
reference implementation and the default, `impl="jnp"`) or to the Pallas kernel of
`deform_conv_pallas` (`impl="pallas"`); the convolution is then one (B*Ho*Wo, K*Cin) x
(K*Cin, Cout) matmul.
"""

import jax.numpy as jnp

from megan_jax.kernels.sampling import sample_jnp

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
    impl: "jnp" (`sampling.sample_jnp`, the default) or "pallas" (`deform_conv_pallas`).

  Returns:
    (B, Ho, Wo, kh*kw, Cin) columns in x.dtype: column [.., k, c] is the mask-weighted bilinear
    sample of channel c at tap k; corners outside the image contribute zero.
  """
  x, offset = jnp.asarray(x), jnp.asarray(offset)
  mask = None if mask is None else jnp.asarray(mask)
  check_geometry(x, offset, mask, kernel_size, stride, padding, dilation, deformable_groups, impl)
  if impl == "pallas":
    # Imported lazily so that the default path never loads Pallas.
    from megan_jax.kernels import deform_conv_pallas  # pylint: disable=import-outside-toplevel
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
