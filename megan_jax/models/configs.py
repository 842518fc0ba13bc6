"""Model configurations: MEGAN, the paper's ablations, a ZSM-equivalent baseline, and a tiny test model.

Every switch of the architecture lives here so that variants are config fields, not subclasses. The
`model_config` ConfigDict is what config files and the command line edit; `ModelSpec.from_config` freezes
it into the immutable spec the flax modules hold. The `*_` reading fields choose between the two readings
of a sentence of the paper (docs/ARCHITECTURE.md quotes each, with its Sec. and Eq.); the defaults are
the readings the text supports.
"""

import dataclasses

import jax.numpy as jnp
import ml_collections

from megan_jax.models.layers import ConvSpec

VARIANTS = ("megan", "no_lmga", "no_nlrb", "zsm", "small", "tiny")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CHOICES = {
    "front_order": ("nlrb_first", "convs_first"),
    "nlrb_scope": ("spacetime", "frame"),
    "attention_impl": ("chunked", "full", "xla", "cudnn"),
    "lmga_pool": ("clip", "others"),
    "lmga_node_embed": ("concat", "separate"),
    "lmga_graph": ("per_layer", "shared"),
    "lmga_output": ("refine", "concat", "residual"),
    "deform_impl": ("jnp", "pallas"),
    "dtype": tuple(DTYPES),
}


def model_config(variant: str = "megan") -> ml_collections.ConfigDict:
  """Returns the model ConfigDict of a named variant (see `VARIANTS`)."""
  c = ml_collections.ConfigDict()
  c.name = "megan"            # the model's name in tables and summaries ("zsm" for :zsm)
  c.nf = 64                   # feature width C
  c.groups = 8                # deformable groups of every modulated deformable conv
  # Front end (Sec. 3.1): shallow conv, then m1 = `front_convs` 3x3 convs and `nlrb_blocks` NLRBs.
  c.front_convs = 3           # m1: 3x3 convs of the front end after the shallow conv
  c.front_rbs = 0             # residual blocks in the front end (ZSM uses 5, MEGAN none)
  c.front_order = "nlrb_first"  # shallow conv -> NLRBs -> m1 convs (Sec. 3.1's order) | "convs_first"
  c.use_nlrb = True           # non-local residual blocks in the front end (False: Table 2 ablation)
  c.nlrb_blocks = 2           # NLRBs in the front end (Eq. (1)-(3))
  c.nlrb_embed = 32           # channels of the u, v, g embeddings
  c.nlrb_scope = "spacetime"  # attention over the whole clip (PFNL) | "frame": within each frame
  c.nlrb_block = 2            # space-to-depth block size r before the attention (2 in PFNL)
  c.nlrb_chunk = 1024         # query positions per attention chunk on the memory-linear path
  # Bidirectional deformable ConvLSTM (Sec. 3.3, Eq. (7)-(11)).
  c.scan_unroll = 1           # ConvLSTM time steps per loop iteration of the scan (speed only)
  # LMGA (Sec. 3.3, Eq. (12)-(13)).
  c.use_lmga = True           # LMGA after the ConvLSTM (False: Table 2 ablation)
  c.lmga_tau = 4              # global-pool size tau
  c.lmga_layers = 2           # graph-conv layers K
  c.lmga_pool = "clip"        # one pool per clip from {1..2n+1} (Sec. 3.3) | "others": per key, without it
  c.lmga_node_embed = "concat"  # N_g over [key feature, node feature] | "separate": each node alone
  c.lmga_graph = "per_layer"  # graph G^k rebuilt from every layer's input | "shared": built once
  c.lmga_self_loops = False   # |E| = |V|(phi - 1): no edge from a node to itself
  c.lmga_output = "refine"    # refine(key node) (Sec. 3.3) | "concat": refine([F_t, key]) | "residual"
  # Reconstruction (Sec. 3.4).
  c.use_pfrdb = True          # progressive fusion residual dense blocks in the reconstruction
  c.pfrdb_blocks = 5          # m2
  c.pfrdb_slope = 0.2         # LeakyReLU slope inside the PFRDBs (PFNL's tf.nn.leaky_relu default)
  c.back_rbs = 20             # m3
  c.hr_features = 64          # width of the convs after the first PixelShuffle (64 in ZSM/MEGAN)
  c.global_residual = False   # add MATLAB bicubic x4 + frame blending to the output (not in the paper)
  # Numerics and kernels.
  c.dtype = "float32"         # compute dtype ("float32" | "bfloat16"); parameters stay float32
  c.deform_impl = "jnp"       # "jnp" | "pallas"
  c.attention_impl = "chunked"  # "chunked" | "full" | "xla" | "cudnn" (jax.nn.dot_product_attention)

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


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The model config frozen: what `MEGAN` holds (hashable, so equal specs share compilations)."""
  name: str
  nf: int
  groups: int
  front_convs: int
  front_rbs: int
  front_order: str
  use_nlrb: bool
  nlrb_blocks: int
  nlrb_embed: int
  nlrb_scope: str
  nlrb_block: int
  nlrb_chunk: int
  scan_unroll: int
  use_lmga: bool
  lmga_tau: int
  lmga_layers: int
  lmga_pool: str
  lmga_node_embed: str
  lmga_graph: str
  lmga_self_loops: bool
  lmga_output: str
  use_pfrdb: bool
  pfrdb_blocks: int
  pfrdb_slope: float
  back_rbs: int
  hr_features: int
  global_residual: bool
  dtype: str
  deform_impl: str
  attention_impl: str

  def __post_init__(self):
    for field, allowed in CHOICES.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f"model.{field}={getattr(self, field)!r}; expected one of {allowed}")
    if self.nlrb_block < 1:
      raise ValueError(f"model.nlrb_block={self.nlrb_block}; expected a block size >= 1 (2 in PFNL)")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "ModelSpec":
    """Freezes a `model_config` ConfigDict; a missing field is named (build configs from model_config)."""
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in config]
    if missing:
      raise ValueError(f"the model config lacks {missing}; start it from "
                       "megan_jax.models.model_config(variant) and edit fields from there")
    return cls(**{n: config[n] for n in names})

  @property
  def conv(self) -> ConvSpec:
    """The settings every feature-level module shares."""
    return ConvSpec(self.nf, self.groups, DTYPES[self.dtype], self.deform_impl)
