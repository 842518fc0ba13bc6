"""Model configurations: MEGAN, the paper's ablations, a ZSM-equivalent baseline, and a tiny test model.

Every switch of the architecture lives here so that variants are config fields, not subclasses.
"""

import ml_collections

VARIANTS = ("megan", "no_lmga", "no_nlrb", "zsm", "small", "tiny")


def model_config(variant: str = "megan") -> ml_collections.ConfigDict:
  """Returns the model ConfigDict of a named variant (see `VARIANTS`)."""
  c = ml_collections.ConfigDict()
  c.name = "megan"
  c.nf = 64                   # feature width C
  c.groups = 8                # deformable groups of every modulated deformable conv
  # Front end (Sec. 3.1): shallow conv, then m1 = `front_convs` 3x3 convs + `nlrb_blocks` NLRBs.
  c.front_convs = 3
  c.front_rbs = 0             # residual blocks in the front end (ZSM uses 5, MEGAN none)
  c.use_nlrb = True
  c.nlrb_blocks = 2
  c.nlrb_embed = 32           # channels of the u, v, g embeddings (C / 2, as in Wang et al.'s non-local block)
  c.nlrb_chunk = 1024         # query positions per attention chunk on the memory-linear path
  # Bidirectional deformable ConvLSTM (Sec. 3.2).
  c.scan_unroll = 1
  # LMGA (Sec. 3.3).
  c.use_lmga = True
  c.lmga_tau = 4              # global-pool size tau
  c.lmga_layers = 2           # graph-conv layers K
  # Reconstruction (Sec. 3.4).
  c.use_pfrdb = True
  c.pfrdb_blocks = 5          # m2
  c.back_rbs = 20             # m3
  c.hr_features = 64          # width of the convs after the first PixelShuffle (64 in ZSM/MEGAN)
  c.global_residual = False   # add bicubic x4 + frame blending to the output (not in the paper)
  # Numerics and kernels.
  c.dtype = "float32"         # compute dtype ("float32" | "bfloat16"); parameters stay float32
  c.deform_impl = "jnp"       # "jnp" | "pallas"
  c.attention_impl = "chunked"  # "chunked" | "xla" | "cudnn" (jax.nn.dot_product_attention)

  if variant == "megan":
    pass
  elif variant == "no_lmga":
    c.use_lmga = False
  elif variant == "no_nlrb":
    c.use_nlrb = False
  elif variant == "zsm":
    # Zooming Slow-Mo (Xiang et al., CVPR 2020), official structure: 5 front RBs, 40 back RBs,
    # no NLRB, LMGA or PFRDB (11,102,771 parameters).
    c.name = "zsm"
    c.front_convs = 0
    c.front_rbs = 5
    c.use_nlrb = False
    c.use_lmga = False
    c.use_pfrdb = False
    c.back_rbs = 40
  elif variant == "small":
    # A narrow MEGAN with every part switched on, for the CPU demo.
    c.nf = 32
    c.groups = 4
    c.nlrb_blocks = 1
    c.nlrb_embed = 16
    c.pfrdb_blocks = 2
    c.back_rbs = 4
  elif variant == "tiny":
    # Every module present at toy width: for tests.
    c.nf = 8
    c.groups = 2
    c.front_convs = 1
    c.nlrb_blocks = 1
    c.nlrb_embed = 4
    c.pfrdb_blocks = 1
    c.back_rbs = 1
    c.hr_features = 8
    c.nlrb_chunk = 16
  else:
    raise ValueError(f"unknown model variant {variant!r}; expected one of {VARIANTS}")
  return c
