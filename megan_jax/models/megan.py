"""MEGAN: Memory Enhanced Graph Attention Network for space-time video super-resolution.

    x (B, n+1, H, W, 3) --shallow conv + m1 (convs, NLRBs)--> F^L1 --pyramid--> (L1, L2, L3)   Sec. 3.1
      --feature temporal interpolation (PCD + DConv)--> 2n+1 frame features                    Sec. 3.2
      --bidirectional deformable ConvLSTM-->                                                   Sec. 3.2
      --LMGA (global/local pools, graph conv)-->                                               Sec. 3.3
      --m2 PFRDBs, m3 residual blocks, 2 x PixelShuffle x2--> y (B, 2n+1, 4H, 4W, 3)          Sec. 3.4

With NLRB, LMGA and PFRDB switched off and 5 front / 40 back residual blocks this is exactly the structure
of Zooming Slow-Mo (`LunaTokis`), which the parameter-count test checks (11,102,771 parameters).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from megan_jax.models.alignment import FeatureInterpolation, FeaturePyramid
from megan_jax.models.convlstm import BiDeformableConvLSTM
from megan_jax.models.layers import Conv, ResidualBlock, lrelu
from megan_jax.models.lmga import LMGA
from megan_jax.models.nonlocal_block import NonLocalResidualBlock
from megan_jax.models.reconstruction import Reconstruction

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class FrontEnd(nn.Module):
  """Shallow feature conv 3->C + LeakyReLU, then m1: convs and NLRBs (Eq. (1)-(3)), or ZSM's RBs."""
  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    f = lrelu(Conv(cfg.nf, dtype=self.dtype, name="conv_first")(x))
    for i in range(cfg.front_convs):
      f = lrelu(Conv(cfg.nf, dtype=self.dtype, name=f"m1_conv{i}")(f))
    if cfg.use_nlrb:
      for i in range(cfg.nlrb_blocks):
        f = NonLocalResidualBlock(cfg.nf, cfg.nlrb_embed, cfg.attention_impl, cfg.nlrb_chunk,
                                  self.dtype, name=f"nlrb{i}")(f)
    for i in range(cfg.front_rbs):
      f = ResidualBlock(cfg.nf, self.dtype, name=f"rb{i}")(f)
    return f


class MEGAN(nn.Module):
  """The full network. `train` switches LMGA's random global pool (RNG stream "lmga")."""
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    cfg = self.config
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"MEGAN expects (B, n+1, H, W, 3) frames, got shape {x.shape}")
    b, t, h, w, _ = x.shape  # (B, n+1, H, W, 3)
    if t < 2:
      raise ValueError(f"MEGAN needs at least 2 input frames, got {t}")
    if h % 4 or w % 4:
      raise ValueError(f"frame size {h}x{w} is not a multiple of 4 (the feature pyramid halves twice); "
                       "pad the frames first (megan_jax.predict does this for inference)")
    if cfg.dtype not in DTYPES:
      raise ValueError(f"model.dtype={cfg.dtype!r}; expected one of {sorted(DTYPES)}")
    dtype = DTYPES[cfg.dtype]

    l1 = FrontEnd(cfg, dtype, name="front")(x.astype(dtype).reshape(b * t, h, w, 3))  # (B T, H, W, C)
    pyramid = FeaturePyramid(cfg.nf, dtype, name="pyramid")(l1)
    pyramid = tuple(p.reshape((b, t) + p.shape[1:]) for p in pyramid)  # (B, T, H_l, W_l, C) each
    mid = FeatureInterpolation(cfg.nf, cfg.groups, dtype, cfg.deform_impl, name="interp")(pyramid)
    # Interleave observed and synthesised features: F_1, F_2, F_3, ..., F_{2n+1}.
    feats = jnp.concatenate([pyramid[0][:, :-1, None], mid[:, :, None]], 2)
    feats = jnp.concatenate([feats.reshape((b, 2 * (t - 1)) + feats.shape[3:]), pyramid[0][:, -1:]], 1)
    feats = BiDeformableConvLSTM(cfg.nf, cfg.groups, dtype, cfg.deform_impl, cfg.scan_unroll,
                                 name="convlstm")(feats)  # (B, 2n+1, H, W, C)
    if cfg.use_lmga:
      feats = LMGA(cfg.nf, cfg.lmga_tau, cfg.lmga_layers, dtype, name="lmga")(feats, train=train)
    out = Reconstruction(cfg.nf, cfg.pfrdb_blocks if cfg.use_pfrdb else 0, cfg.back_rbs,
                         cfg.hr_features, dtype, name="recon")(feats)
    out = out.astype(jnp.float32)  # (B, 2n+1, 4H, 4W, 3)
    if cfg.global_residual:
      out = out + upsample_and_blend(x.astype(jnp.float32))  # unrounded by `dtype`
    return out


def upsample_and_blend(x: jax.Array) -> jax.Array:
  """Bicubic x4 of every input frame, in-between frames the mean of their neighbours.

  (B, n+1, H, W, 3) -> (B, 2n+1, 4H, 4W, 3). With `model.global_residual` the network only learns
  the correction to this baseline. Not in the paper or in ZSM (off in every paper config); it makes
  very short trainings, such as the CPU demo, converge.
  """
  b, t, h, w, c = x.shape
  up = jax.image.resize(x, (b, t, 4 * h, 4 * w, c), "bicubic")
  mid = 0.5 * (up[:, :-1] + up[:, 1:])
  both = jnp.stack([up[:, :-1], mid], 2).reshape((b, 2 * (t - 1)) + up.shape[2:])
  return jnp.concatenate([both, up[:, -1:]], 1)
