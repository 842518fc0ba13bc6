"""MEGAN: Memory Enhanced Graph Attention Network for space-time video super-resolution.

    x (B, n+1, H, W, 3) --shallow conv + m1 (NLRBs, convs)--> F^L1 --pyramid--> (L1, L2, L3)   Sec. 3.1
      --feature temporal interpolation (PCD + DConv)--> 2n+1 frame features                    Sec. 3.2
      --bidirectional deformable ConvLSTM-->                                  Sec. 3.3, Eq. (7)-(11)
      --LMGA (global/local pools, graph conv)-->                             Sec. 3.3, Eq. (12)-(13)
      --m2 PFRDBs, m3 residual blocks, 2 x PixelShuffle x2--> y (B, 2n+1, 4H, 4W, 3)          Sec. 3.4

With NLRB, LMGA and PFRDB switched off and 5 front / 40 back residual blocks this is exactly the structure
of Zooming Slow-Mo (`LunaTokis`), which the parameter-count test checks (11,102,771 parameters).
The module holds a frozen `ModelSpec` (`ModelSpec.from_config(model_config(...))`), never a ConfigDict.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from megan_jax.baseline import bicubic_blend_jnp
from megan_jax.models.alignment import FeatureInterpolation, FeaturePyramid
from megan_jax.models.configs import ModelSpec
from megan_jax.models.convlstm import BiDeformableConvLSTM
from megan_jax.models.layers import Conv, ResidualBlock, lrelu
from megan_jax.models.lmga import LMGA
from megan_jax.models.nonlocal_block import NonLocalResidualBlock
from megan_jax.models.reconstruction import Reconstruction


class FrontEnd(nn.Module):
  """Sec. 3.1: shallow 3x3 conv 3->C + LeakyReLU, the NLRBs (Eq. (1)-(3)), the m1 convs; or ZSM's RBs.

  (B, T, H, W, 3) -> (B T, H, W, C). `front_order` "nlrb_first" follows Sec. 3.1's order ("we first use
  a 3x3 convolutional (Conv) layer as a shallow feature extractor. Then, we incorporate a residual
  non-local attention block ... After the m1 Conv layers, the hierarchical feature maps ... serve as
  inputs for the following frame feature interpolation module"); "convs_first" runs the convs first.
  m1 = 3 (Sec. 3.6) counts the convs after the shallow one; two NLRBs (Sec. 5: "removing two NLRB
  blocks").
  """
  spec: ModelSpec

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s, conv = self.spec, self.spec.conv
    b, t, h, w, _ = x.shape  # (B, T, H, W, 3)
    f = lrelu(Conv(s.nf, dtype=conv.dtype, name="conv_first")(x.reshape(b * t, h, w, 3)))

    def convs(f):
      for i in range(s.front_convs):
        f = lrelu(Conv(s.nf, dtype=conv.dtype, name=f"m1_conv{i}")(f))
      return f

    def nlrbs(f):
      if not s.use_nlrb:
        return f
      f = f.reshape(b, t, h, w, s.nf)
      for i in range(s.nlrb_blocks):
        f = NonLocalResidualBlock(conv, s.nlrb_embed, s.nlrb_scope, s.nlrb_block, s.attention_impl,
                                  s.nlrb_chunk, name=f"nlrb{i}")(f)
      return f.reshape(b * t, h, w, s.nf)

    f = convs(nlrbs(f)) if s.front_order == "nlrb_first" else nlrbs(convs(f))
    for i in range(s.front_rbs):
      f = ResidualBlock(conv, name=f"rb{i}")(f)
    return f


class MEGAN(nn.Module):
  """The full network. `train` switches LMGA's random global pool (RNG stream "lmga"); `frames`
  (indices of the 2n+1 outputs, None: all) reconstructs only those: everything up to the PFRDBs
  needs every frame, the per-frame residual blocks and upsampler run on `frames` alone (upscaling
  at the input frame rate does not reconstruct the frames it drops)."""
  spec: ModelSpec

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False,
               frames: tuple[int, ...] | None = None) -> jax.Array:
    s, conv = self.spec, self.spec.conv
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"MEGAN expects (B, n+1, H, W, 3) frames, got shape {x.shape}")
    b, t, h, w, _ = x.shape  # (B, n+1, H, W, 3)
    if t < 2:
      raise ValueError(f"MEGAN needs at least 2 input frames, got {t}")
    if h % 4 or w % 4:
      raise ValueError(f"frame size {h}x{w} is not a multiple of 4 (the feature pyramid halves twice); "
                       "pad the frames first (megan_jax.predict does this for inference)")
    if s.use_nlrb and (h % s.nlrb_block or w % s.nlrb_block):
      raise ValueError(f"frame size {h}x{w} is not a multiple of model.nlrb_block={s.nlrb_block} "
                       f"(the NLRB's space-to-depth); pad to a multiple of {math.lcm(4, s.nlrb_block)}")

    l1 = FrontEnd(s, name="front")(x.astype(conv.dtype))  # (B T, H, W, C)
    pyramid = FeaturePyramid(conv, name="pyramid")(l1)
    pyramid = tuple(p.reshape((b, t) + p.shape[1:]) for p in pyramid)  # (B, T, H_l, W_l, C) each
    mid = FeatureInterpolation(conv, name="interp")(pyramid)
    # Interleave observed and synthesised features: F_1, F_2, F_3, ..., F_{2n+1}.
    feats = jnp.concatenate([pyramid[0][:, :-1, None], mid[:, :, None]], 2)
    feats = jnp.concatenate([feats.reshape((b, 2 * (t - 1)) + feats.shape[3:]), pyramid[0][:, -1:]], 1)
    feats = BiDeformableConvLSTM(conv, s.scan_unroll, name="convlstm")(feats)  # (B, 2n+1, H, W, C)
    if s.use_lmga:
      feats = LMGA(conv, s.lmga_tau, s.lmga_layers, s.lmga_pool, s.lmga_node_embed, s.lmga_graph,
                   s.lmga_self_loops, s.lmga_output, name="lmga")(feats, train=train)
    out = Reconstruction(conv, s.pfrdb_blocks if s.use_pfrdb else 0, s.pfrdb_slope, s.back_rbs,
                         s.hr_features, name="recon")(feats, frames)
    out = out.astype(jnp.float32)  # (B, 2n+1, 4H, 4W, 3), or (B, len(frames), ...)
    if s.global_residual:
      base = bicubic_blend_jnp(x.astype(jnp.float32))  # unrounded by `dtype`
      out = out + (base if frames is None else base[:, list(frames)])
    return out
