"""Bidirectional deformable ConvLSTM, Sec. 3.3, Eq. (7)-(11) (ZSM's `BiDeformableConvLSTM`).

At every step the previous hidden and cell states are first aligned to the current input feature by
deformable alignment (Eq. (7)-(10): g^h, g^c "deploys the Pyramid, Cascading and Deformable (PCD)
architecture in [57]", a PCD module per state, each with its own 3-level pyramid), then the ConvLSTM
gates come from one 3x3 conv over [x_t, h~] (Eq. (11)):

    h~ = A_h(x_t, h_{t-1}),  c~ = A_c(x_t, c_{t-1})
    i, f, o, g = split(W * [x_t, h~] + b);  c_t = sigma(f) c~ + sigma(i) tanh(g);  h_t = sigma(o) tanh(c_t)

The recurrence runs through `nn.scan` (weights shared across time). The forward and the backward pass share
their weights, as in the official ZSM code, so both directions run in ONE scan with the time-reversed
sequence stacked on the batch axis; a 1x1 conv fuses [h_fwd, h_bwd].
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from megan_jax.models.alignment import FeaturePyramid, PCDAlign
from megan_jax.models.layers import Conv, ConvSpec


class StateAlignment(nn.Module):
  """ZSM's `Easy_PCD`: aligns a recurrent state to the current input, Eq. (7)/(9) or (8)/(10).

  As the code of [60] that Sec. 3.3 adopts: PCD in both directions between state and input, fused by
  a 1x1 conv, where Eq. (9)-(10) print one DConv of the state.
  """
  spec: ConvSpec

  @nn.compact
  def __call__(self, x: jax.Array, state: jax.Array) -> jax.Array:
    b = x.shape[0]  # x, state: (B, H, W, C)
    pyramid = FeaturePyramid(self.spec, name="pyramid")(jnp.concatenate([x, state], 0))
    first = tuple(level[:b] for level in pyramid)
    second = tuple(level[b:] for level in pyramid)
    aligned = PCDAlign(self.spec, name="pcd")(first, second)
    return Conv(self.spec.features, kernel=1, dtype=self.spec.dtype, name="fusion")(aligned)


class DeformableConvLSTMCell(nn.Module):
  """One time step, Eq. (7)-(11). Carry (h, c), input x_t; returns the new carry and h_t."""
  spec: ConvSpec

  @nn.compact
  def __call__(self, carry, x):
    h, c = carry  # (B, H, W, C) each
    align = lambda name: StateAlignment(self.spec, name=name)
    h_aligned = align("align_h")(x, h)
    c_aligned = align("align_c")(x, c)
    gates = Conv(4 * self.spec.features, dtype=self.spec.dtype, name="gates")(jnp.concatenate([x, h_aligned], -1))
    i, f, o, g = jnp.split(gates, 4, axis=-1)  # PyTorch ConvLSTMCell order
    c_new = jax.nn.sigmoid(f) * c_aligned + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
    return (h_new, c_new), h_new


class BiDeformableConvLSTM(nn.Module):
  """Both temporal directions of the deformable ConvLSTM over (B, T, H, W, C), fused by a 1x1 conv."""
  spec: ConvSpec
  unroll: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape  # (B, T, H, W, C)
    both = jnp.concatenate([x, x[:, ::-1]], 0)  # (2B, T, H, W, C): forward and reversed sequences
    scan = nn.scan(DeformableConvLSTMCell, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1, unroll=self.unroll)
    zeros = jnp.zeros((2 * b, h, w, self.spec.features), x.dtype)
    _, hs = scan(self.spec, name="cell")((zeros, zeros), both)
    fused = jnp.concatenate([hs[:b], hs[b:, ::-1]], -1)  # (B, T, H, W, 2C)
    return Conv(self.spec.features, kernel=1, dtype=self.spec.dtype, name="fusion")(fused)
