"""Progressive fusion reconstruction, Sec. 3.4: m2 PFRDBs, m3 residual blocks and the x4 upsampler.

Sec. 3.4: "we first utilize m2 PFRDBs [65] ... After that, we concatenate m3 residual blocks [27] ...
For up-sampling, we perform x2 upsample PixelShuffle operations [44, 27]. The last Conv layer fuses all
the feature maps to reconstruct HR video sequence"; m2, m3 = 5, 20 (Sec. 3.6). The PFRDB's layers,
the widths after PixelShuffle and the activations are not in the paper (PFNL's and ZSM's here).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from megan_jax.models.layers import (Conv, ConvSpec, ResidualBlock, he_init, lrelu, pixel_shuffle,
                                     residual_init)


class ProgressiveFusionBlock(nn.Module):
  """Progressive fusion residual dense block, PFNL's PFRB (Yi et al., ICCV 2019), over (B, T, H, W, C).

      a_t = LReLU(conv3x3(F_t))                     per-frame features (weights shared over t)
      d   = LReLU(conv1x1([a_1, ..., a_T]))         distillation of all frames into C channels
      F'_t = F_t + LReLU(conv3x3([a_t, d]))         fusion back into each frame, residual

  As PFNL's official code (psychopa4/PFNL, model/pfnl.py: `conv1`, `conv10`, `conv2`, each with
  `activation=tf.nn.leaky_relu`, whose default slope is 0.2; `model.pfrdb_slope`). The distillation conv
  sees T * C channels, so, as in PFNL, a trained model is tied to its number of frames.
  """
  spec: ConvSpec
  slope: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape  # (B, T, H, W, C)
    act = lambda y: lrelu(y, self.slope)
    conv = functools.partial(Conv, c, dtype=self.spec.dtype, kernel_init=residual_init)
    a = act(conv(name="frame")(x))
    stacked = a.transpose(0, 2, 3, 1, 4).reshape(b, h, w, t * c)  # (B, H, W, T C)
    d = act(Conv(c, kernel=1, dtype=self.spec.dtype, name="distill")(stacked))  # (B, H, W, C)
    fused = jnp.concatenate([a, jnp.broadcast_to(d[:, None], a.shape)], -1)
    return x + act(conv(name="fuse")(fused))


class Upsampler(nn.Module):
  """Two x2 PixelShuffle stages (conv C->4*64, shuffle, LeakyReLU), HR conv + LeakyReLU, conv to RGB.

  `hr_features` is 64 in ZSM and MEGAN whatever C is; narrow models (the CPU demo) lower it, since the
  x4-resolution convs dominate their cost.
  """
  spec: ConvSpec
  hr_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda feat, name, init=he_init: Conv(feat, dtype=self.spec.dtype, kernel_init=init, name=name)
    x = lrelu(pixel_shuffle(conv(self.spec.features * 4, "up1")(x), 2))
    x = lrelu(pixel_shuffle(conv(self.hr_features * 4, "up2")(x), 2))
    x = lrelu(conv(self.hr_features, "hr_conv")(x))
    return conv(3, "conv_last", residual_init)(x)


class Reconstruction(nn.Module):
  """m2 PFRDBs over all frames, m3 residual blocks per frame, then the x4 upsampler. (B, T, H, W, C) in."""
  spec: ConvSpec
  pfrdb_blocks: int
  pfrdb_slope: float
  back_rbs: int
  hr_features: int

  @nn.compact
  def __call__(self, x: jax.Array, frames: tuple[int, ...] | None = None) -> jax.Array:
    """`frames`: the indices of the T frames to reconstruct (None: all). The PFRDBs fuse all T
    frames; the residual blocks and the upsampler, per frame, run on `frames` only."""
    for i in range(self.pfrdb_blocks):
      x = ProgressiveFusionBlock(self.spec, self.pfrdb_slope, name=f"pfrdb{i}")(x)
    if frames is not None:
      x = x[:, list(frames)]
    b, t, h, w, c = x.shape  # (B, T', H, W, C): T' = len(frames)
    x = x.reshape(b * t, h, w, c)
    for i in range(self.back_rbs):
      x = ResidualBlock(self.spec, name=f"rb{i}")(x)
    out = Upsampler(self.spec, self.hr_features, name="upsampler")(x)  # (B T, 4H, 4W, 3)
    return out.reshape((b, t) + out.shape[1:])
