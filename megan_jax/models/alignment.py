"""Feature pyramid and PCD deformable alignment: frame feature temporal interpolation, Sec. 3.2, Eq. (4)-(6).

MEGAN synthesises the feature of a missing in-between frame from its two neighbours as Zooming Slow-Mo
does (Xiang et al., CVPR 2020):

    dp_1 = g_1([F_1, F_3]),  dp_3 = g_3([F_3, F_1])                  Eq. (4): offsets and masks from the
    F_1' = DConv(F_1, dp_1),  F_3' = DConv(F_3, dp_3)                Eq. (5): concatenated pair; sampling
    F_2 = C_1(F_1') + C_3(F_3') = W [F_1', F_3'] + b                 Eq. (6): C_1, C_3 "1 x 1 Conv layer"

Eq. (6)'s two 1x1 convs are one 1x1 conv over the concatenation (ZSM's `fusion`): the same function,
with the two biases summed into one (C fewer parameters than two separate convs).

g is the pyramid, cascading and deformable (PCD) scheme of EDVR over 3 levels: level-l offset features come
from the concatenated pair and from the x2 bilinearly upsampled level-(l+1) offset feature multiplied by 2
(displacements double with resolution); aligned features are cascaded upwards the same way.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from megan_jax.models.layers import Conv, ConvSpec, ModulatedDeformConv, lrelu, upsample2x_bilinear

Pyramid = tuple[jax.Array, jax.Array, jax.Array]  # (L1, L2, L3): full, 1/2 and 1/4 resolution


class FeaturePyramid(nn.Module):
  """Levels 2 and 3 of the feature pyramid: two (stride-2 conv, conv) pairs with LeakyReLU."""
  spec: ConvSpec

  @nn.compact
  def __call__(self, l1: jax.Array) -> Pyramid:
    c, dtype = self.spec.features, self.spec.dtype
    l2 = lrelu(Conv(c, stride=2, dtype=dtype, name="l2_conv1")(l1))
    l2 = lrelu(Conv(c, dtype=dtype, name="l2_conv2")(l2))
    l3 = lrelu(Conv(c, stride=2, dtype=dtype, name="l3_conv1")(l2))
    l3 = lrelu(Conv(c, dtype=dtype, name="l3_conv2")(l3))
    return l1, l2, l3


class PCDAlignOneWay(nn.Module):
  """Aligns pyramid `a` towards pyramid `b`: Eq. (4)-(5) for one direction (ZSM's `*_1` or `*_2` branch)."""
  spec: ConvSpec

  @nn.compact
  def __call__(self, a: Pyramid, b: Pyramid) -> jax.Array:
    conv = lambda name: Conv(self.spec.features, dtype=self.spec.dtype, name=name)
    dconv = lambda name: ModulatedDeformConv(self.spec, name=name)
    # Level 3 (1/4 resolution).
    off = lrelu(conv("l3_offset_conv1")(jnp.concatenate([a[2], b[2]], -1)))
    off = lrelu(conv("l3_offset_conv2")(off))
    fea = lrelu(dconv("l3_dcn")(a[2], off))
    # Levels 2 and 1: offsets cascade from the coarser level (x2 upsampled, x2 in magnitude).
    for level in (2, 1):
      i = level - 1
      new_off = lrelu(conv(f"l{level}_offset_conv1")(jnp.concatenate([a[i], b[i]], -1)))
      off = jnp.concatenate([new_off, 2.0 * upsample2x_bilinear(off)], -1)
      off = lrelu(conv(f"l{level}_offset_conv2")(off))
      off = lrelu(conv(f"l{level}_offset_conv3")(off))
      aligned = dconv(f"l{level}_dcn")(a[i], off)
      fea = conv(f"l{level}_fea_conv")(jnp.concatenate([aligned, upsample2x_bilinear(fea)], -1))
      if level == 2:
        fea = lrelu(fea)
    return fea


class PCDAlign(nn.Module):
  """Both directions of Eq. (4)-(5); returns [T_a, T_b] concatenated on channels (B, H, W, 2C)."""
  spec: ConvSpec

  @nn.compact
  def __call__(self, a: Pyramid, b: Pyramid) -> jax.Array:
    one_way = lambda name: PCDAlignOneWay(self.spec, name=name)
    return jnp.concatenate([one_way("forward")(a, b), one_way("backward")(b, a)], -1)


class FeatureInterpolation(nn.Module):
  """Sec. 3.2, Eq. (4)-(6): in-between features for every adjacent pair of input frames.

  All n pairs are aligned in one batched call (pairs folded into the batch axis).
  """
  spec: ConvSpec

  @nn.compact
  def __call__(self, pyramid: Pyramid) -> jax.Array:
    b, t = pyramid[0].shape[:2]  # levels are (B, T, H_l, W_l, C)
    fold = lambda x: x.reshape((b * (t - 1),) + x.shape[2:])
    first = tuple(fold(level[:, :-1]) for level in pyramid)
    second = tuple(fold(level[:, 1:]) for level in pyramid)
    aligned = PCDAlign(self.spec, name="pcd")(first, second)
    mid = Conv(self.spec.features, kernel=1, dtype=self.spec.dtype, name="fusion")(aligned)  # Eq. (6)
    return mid.reshape((b, t - 1) + mid.shape[1:])  # (B, n, H, W, C)
