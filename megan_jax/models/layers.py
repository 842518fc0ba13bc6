"""Building blocks shared by every part of the network.

Initialisation: plain convs use He (kaiming-normal, fan-in) initialisation, which keeps the activation
scale through the LeakyReLU stacks. PyTorch's default conv scale, used by the ZSM code (variance
1 / (3 fan_in)), shrinks the signal by about sqrt(1/6) per conv: through the ~60 convs between input and
output the tiny test model's gradients fell to 1e-10, below Adam's epsilon, and its output started as a
flat frame. Convs inside residual blocks use kaiming-normal scaled by 0.1 (`initialize_weights(..., 0.1)`
in ZSM's `module_util.py`), as does the last conv to RGB; biases start at zero.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels import deform_conv2d

Dtype = Any

he_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
residual_init = nn.initializers.variance_scaling(2.0 * 0.1**2, "fan_in", "normal")


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """The settings every feature-level module shares, built once from the model config and passed down.

  features: the feature width C; groups: deformable groups of every modulated deformable conv;
  dtype: the compute dtype (parameters stay float32); deform_impl: "jnp" | "pallas" sampling.
  """
  features: int
  groups: int
  dtype: Dtype
  deform_impl: str


def lrelu(x: jax.Array, slope: float = 0.1) -> jax.Array:
  """LeakyReLU, slope 0.1 (the activation of ZSM and MEGAN) unless told otherwise."""
  return nn.leaky_relu(x, negative_slope=slope)


class Conv(nn.Module):
  """A 2-D convolution with PyTorch-style symmetric padding (k // 2 on each side).

  Flax's "SAME" pads (0, 1) for stride 2 on even sizes, PyTorch pads (1, 1): we pad explicitly so a
  stride-2 pyramid conv samples the same pixels as the original.
  """
  features: int
  kernel: int = 3
  stride: int = 1
  dtype: Dtype = jnp.float32
  kernel_init: Any = he_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.kernel // 2
    return nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                   padding=((p, p), (p, p)), dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=self.kernel_init, bias_init=nn.initializers.zeros)(x)


class ResidualBlock(nn.Module):
  """Residual block without normalisation: x + conv(relu(conv(x))) (EDVR's ResidualBlock_noBN)."""
  spec: ConvSpec

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(Conv, self.spec.features, dtype=self.spec.dtype, kernel_init=residual_init)
    return x + conv(name="conv2")(nn.relu(conv(name="conv1")(x)))


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """Depth-to-space with PyTorch's channel order: out[h*r+i, w*r+j, c] = in[h, w, c*r*r + i*r + j]."""
  b, h, w, c = x.shape  # (B, H, W, C*r*r)
  x = x.reshape(b, h, w, c // (r * r), r, r)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def upsample2x_bilinear(x: jax.Array) -> jax.Array:
  """x2 bilinear upsampling of (..., H, W, C), equal to torch's `interpolate(align_corners=False)`.

  Output pixel 2i samples input coordinate i - 1/4 and 2i+1 samples i + 1/4, clamped at the border, so
  every output is 3/4 of its own input pixel plus 1/4 of the neighbour on its side.
  """
  def along(x, axis):
    n = x.shape[axis]
    prev = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis),
                            jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis),
                           jax.lax.slice_in_dim(x, n - 1, n, axis=axis)], axis=axis)
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)

  return along(along(x, x.ndim - 3), x.ndim - 2)


class ModulatedDeformConv(nn.Module):
  """Modulated deformable 3x3 convolution (DCNv2) whose offsets and masks come from a guide feature.

  As ZSM's `DCN_sep`: a zero-initialised 3x3 conv on the guide predicts 3 * G * 9 channels, split into
  offsets (the first 2 * G * 9, in the kernel's (g, k, (dy, dx)) order) and mask logits (the last G * 9,
  passed through a sigmoid). At initialisation every offset is 0 and every mask 0.5.
  """
  spec: ConvSpec

  @nn.compact
  def __call__(self, x: jax.Array, guide: jax.Array) -> jax.Array:
    taps, s = 9, self.spec
    om = Conv(3 * s.groups * taps, dtype=s.dtype, kernel_init=nn.initializers.zeros,
              name="conv_offset_mask")(guide)  # (B, H, W, 3 G 9)
    offset = om[..., : 2 * s.groups * taps]
    mask = jax.nn.sigmoid(om[..., 2 * s.groups * taps:])
    cin = x.shape[-1]
    weight = self.param("kernel", he_init, (3, 3, cin, s.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (s.features,), jnp.float32)
    return deform_conv2d(x.astype(s.dtype), offset, mask, weight.astype(s.dtype),
                         bias.astype(s.dtype), stride=1, padding=1, dilation=1,
                         deformable_groups=s.groups, impl=s.deform_impl)
