"""What the benchmark times: a cell's jitted program, built from a configs/vimeo.py variant.

A cell is one (mode, variant, dtype, size, batch). Everything else (the model config, the frame
count, the optimiser and its schedule, the loss epsilon, the seed) comes from
`configs/vimeo.py:<variant>`, the config a training run of that variant uses, so a change of the
paper setting changes what the benchmark measures with it.
- infer: one forward pass (train=False) of B windows (B, n+1, h, w, 3) -> (B, 2n+1, 4h, 4w, 3);
  items are output frames (2n+1 per window).
- train: one `megan_jax.train` step (forward, backward, optimiser update) on B clips of
  (n+1) x crop x crop LR and (2n+1) x 4crop x 4crop GT frames; items are clips. One device.

Beside each cell the benchmark times its ceiling (`ceiling_program`): one plain 3x3 convolution of
the model's width `nf`, in and out, over the cell's frames at its LR size, forward for infer and
forward + both gradients for train. Its FLOP/s is what this machine reaches on the model's
cheapest dense op at that width and batch; the cell's FLOP/s over it ("vs 3x3 conv") is the
efficiency figure (issue 19: raise it where it is cheap).

XLA counts a while loop's body once whatever its trip count, so FLOPs are counted on a loop-free
twin of the program (the ConvLSTM scan unrolled, the non-local attention unchunked, the `jnp`
deformable sampling: the same arithmetic), which is lowered but never compiled.
"""

import dataclasses
import importlib.util
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from megan_jax import train
from megan_jax.data.pipeline import SCALE
from megan_jax.models import build_model

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "vimeo.py")


@dataclasses.dataclass(frozen=True)
class Cell:
  """One measurement; `size` is the LR (h, w): the frame for infer, the crop for train."""
  mode: str      # "infer" | "train"
  variant: str   # the argument of configs/vimeo.py (a megan_jax.models.VARIANTS name)
  dtype: str     # compute dtype, "float32" | "bfloat16"
  size: tuple[int, int]
  batch: int
  overrides: tuple[tuple[str, object], ...] = ()  # model config fields, e.g. (("scan_unroll", 7),)
  config: str = DEFAULT_CONFIG  # the config file whose `get_config(variant)` describes the run

  @property
  def name(self) -> str:
    return f"{self.mode}-{self.variant}-{self.dtype}-{self.size[0]}x{self.size[1]}-b{self.batch}"


@dataclasses.dataclass
class Program:
  """A jitted function with its arguments, and the loop-free twin whose FLOPs are counted."""
  fn: Callable
  args: tuple
  count_fn: Callable | None  # None: `fn` itself has no loops
  count_args: tuple
  items_per_call: int          # output frames (infer) or clips (train)
  threads_state: bool = False  # fn returns (state, ...) and state is the next call's first argument


def load_config(path: str, variant: str) -> ml_collections.ConfigDict:
  """`get_config(variant)` of the config file `path` (as `--config=path:variant` would load it)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config: {path} does not exist; the benchmark reads the run config "
                            f"of each variant from it (configs/vimeo.py in a checkout)")
  spec = importlib.util.spec_from_file_location("megan_jax_benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def run_config(cell: Cell) -> ml_collections.ConfigDict:
  """The run config of the cell's variant with its compute dtype and model overrides applied."""
  config = load_config(cell.config, cell.variant)
  model = config.model
  model.dtype = cell.dtype
  for key, value in cell.overrides:
    if key not in model:
      raise ValueError(f"--override {key}={value}: no field {key!r} in the model config of "
                       f"variant {cell.variant!r}")
    if isinstance(model[key], float) and isinstance(value, int):
      value = float(value)
    if type(value) is not type(model[key]):  # pylint: disable=unidiomatic-typecheck
      raise ValueError(f"--override {key}={value!r}: config.model.{key} of variant "
                       f"{cell.variant!r} is a {type(model[key]).__name__} ({model[key]!r})")
    model[key] = value
  return config


def _models(config: ml_collections.ConfigDict):
  """The timed model and its loop-free twin (see the module docstring; None if it is the model)."""
  cfg = config.model
  frames_out = 2 * config.data.num_input_frames - 1  # 2n+1
  twin = ml_collections.ConfigDict(cfg.to_dict())
  twin.update(scan_unroll=frames_out, attention_impl="full", deform_impl="jnp")
  loop_free = cfg.scan_unroll >= frames_out and cfg.attention_impl == "full" and (
      cfg.deform_impl == "jnp")
  return build_model(cfg), None if loop_free else build_model(twin)


_PARAMS: dict = {}  # (variant, overrides) -> parameters, shared by the cells of one process


def _init_params(cell: Cell, config: ml_collections.ConfigDict, model):
  """The parameters the variant's training run starts from (float32 whatever the compute dtype),
  copied: a train step donates its state."""
  key = (cell.config, cell.variant, cell.overrides)
  if key not in _PARAMS:
    x = jnp.zeros((1, config.data.num_input_frames, 16, 16, 3))  # (B, n+1, h, w, 3); size-free
    rng = jnp.asarray(train.rng_streams(config.seed)["params"])
    _PARAMS[key] = jax.jit(
        lambda k: model.init({"params": k, "lmga": k}, x, train=False))(rng)["params"]
  return jax.tree.map(jnp.copy, _PARAMS[key])


def infer_program(cell: Cell) -> Program:
  """B windows through the model, train=False."""
  config = run_config(cell)
  model, twin = _models(config)
  variables = {"params": _init_params(cell, config, model)}
  n_in = config.data.num_input_frames
  x = jax.random.uniform(jax.random.key(0), (cell.batch, n_in) + cell.size + (3,))  # (B, n+1, h, w, 3)
  forward = lambda m: None if m is None else jax.jit(lambda v, lr: m.apply(v, lr, train=False))
  return Program(forward(model), (variables, x), forward(twin), (variables, x),
                 items_per_call=cell.batch * (2 * n_in - 1))


def train_program(cell: Cell) -> Program:
  """One `megan_jax.train` step (forward, backward, optimiser update) on a random batch."""
  config = run_config(cell)
  model, twin = _models(config)
  tx, _ = train.make_optimizer(config)
  state = train.new_state(_init_params(cell, config, model), tx)
  n_in = config.data.num_input_frames
  h, w = cell.size
  key_lr, key_gt = jax.random.split(jax.random.key(1))
  batch = {"lr": jax.random.uniform(key_lr, (cell.batch, n_in, h, w, 3)),  # (B, n+1, h, w, 3)
           "gt": jax.random.uniform(key_gt, (cell.batch, 2 * n_in - 1, SCALE * h, SCALE * w, 3))}
  rng = jnp.asarray(train.rng_streams(config.seed)["lmga"])
  step = lambda m: None if m is None else jax.jit(train.make_train_step(m, tx, config.loss_eps),
                                                  donate_argnums=(0,))
  # The twin is only lowered: it may share (and never donates) the state's buffers.
  return Program(step(model), (state, batch, rng), step(twin), (state, batch, rng),
                 items_per_call=cell.batch, threads_state=True)


def ceiling_program(cell: Cell) -> Program:
  """A 3x3 conv, nf -> nf channels, SAME, over the cell's B x frames at its LR size (see above).

  infer: the forward conv on B * (2n+1) frames of h x w (the frames of the model's feature stages);
  train: the conv with the gradients of its input and kernel (what backpropagation adds to each
  conv of a train step) on B * (2n+1) frames of crop x crop.
  """
  config = run_config(cell)
  nf, dtype = config.model.nf, config.model.dtype
  frames = cell.batch * (2 * config.data.num_input_frames - 1)
  key_x, key_k = jax.random.split(jax.random.key(2))
  x = jax.random.uniform(key_x, (frames,) + cell.size + (nf,), dtype=dtype)  # (B*(2n+1), h, w, nf)
  kernel = jax.random.normal(key_k, (3, 3, nf, nf), dtype=dtype) / (3 * nf ** 0.5)  # (3, 3, nf, nf)
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if cell.mode == "infer":
    fn = jax.jit(conv)
  else:
    # A squared loss: its cotangent is the conv's output, so the forward conv is computed too.
    loss = lambda x, k: 0.5 * jnp.sum(jnp.square(conv(x, k).astype(jnp.float32)))
    fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return Program(fn, (x, kernel), None, (), items_per_call=frames)


PROGRAMS = {"infer": infer_program, "train": train_program, "ceiling": ceiling_program}
