"""Every numeric config field checked before any work, from one table.

A bad value (a zero interval, a negative learning rate, a crop the model cannot take) would
otherwise surface only after minutes of compiling, as a ZeroDivisionError deep in the loop, or not
at all (gradient ascent, every checkpoint discarded). `check` raises a ValueError whose message is
one line naming the field, the value and what is allowed. `RULES` lists the fields of
configs/vimeo.py and megan_jax/models/configs.py ("*" matches any key, as in the per-clip
`data.prescale` of configs/demo.py); a field that a config does not have is skipped. The string
choices of the model (including `model.dtype`) are checked by `ModelSpec` itself; `eval.dtype` and
`infer.dtype` take the same choices or None.
"""

import math
from typing import Callable, NamedTuple

import ml_collections

from megan_jax.models.configs import CHOICES, ModelSpec

Bound = float | Callable[[ml_collections.ConfigDict], tuple[float, str]] | None


class Range(NamedTuple):
  """The values a numeric field allows: low <= value <= high (bounds may depend on other fields:
  a callable config -> (bound, how it is written))."""
  low: Bound = None
  high: Bound = None
  integer: bool = True
  optional: bool = False   # None is allowed (the field's documented default)
  open_low: bool = False   # low itself is not allowed
  open_high: bool = False
  multiple: Callable[[ml_collections.ConfigDict], tuple[int, str]] | None = None
  note: str = ""           # what the allowed values mean, or what a refused one would do


def _model_multiple(config) -> tuple[int, str]:
  """Frame sizes the model takes: the feature pyramid halves twice (Sec. 3.2), and the NLRB's
  space-to-depth (Sec. 3.1) needs multiples of model.nlrb_block."""
  model = config.get("model")
  if model is None or not model.get("use_nlrb") or not isinstance(model.get("nlrb_block"), int):
    return 4, "4 (the feature pyramid halves twice)"
  block = model.nlrb_block
  return (math.lcm(4, block), f"{math.lcm(4, block)} (the feature pyramid halves twice; "
          f"model.nlrb_block={block})")


INDEX_LIMIT = 2**31 - 1  # the deformable sampling's gather indices are int32


def max_side(config) -> int:
  """The largest square frame side (LR pixels, a multiple the model takes) whose deformable
  sampling the model can index: (side + 1)^2 x model.groups <= 2^31 - 1 (`kernels.sampling`)."""
  model = config.get("model")
  groups = model.get("groups") if model is not None else None
  groups = groups if isinstance(groups, int) and groups > 0 else 1
  side = math.isqrt(INDEX_LIMIT // groups) - 1
  return side - side % _model_multiple(config)[0]


def _tile_high(section: str):
  def high(config) -> tuple[float, str]:
    tile = config[section].get("tile")
    return (math.inf, "") if tile is None else (tile - 4, f"config.{section}.tile - 4 = {tile - 4}")
  return high


def _groups(config) -> tuple[int, str]:
  groups = config.model.get("groups")
  return (groups, f"model.groups={groups} (each deformable group takes nf / groups channels)") if (
      isinstance(groups, int) and groups > 0) else (1, "1")


FOUR = lambda config: (4, "4")
POSITIVE = Range(1)
COUNT = Range(0)
RATE = Range(0, integer=False, open_low=True)
STEP = Range(0, optional=True, note="None: the latest")
TILE = Range(4, optional=True, multiple=_model_multiple, note="None: whole frames")

RULES: dict[str, Range] = {
    "seed": COUNT,
    "seeds.*": Range(0, optional=True, note="None: config.seed"),
    "data.crop": Range(4, multiple=_model_multiple),
    "data.num_input_frames": Range(2, note="n+1 LR inputs, the model outputs 2n+1 frames"),
    "data.workers": Range(0, note="0: in the main process"),
    "data.read_threads": POSITIVE,
    "data.prescale.*": POSITIVE,
    "data.stills_scales.*": POSITIVE,
    "batch_size": POSITIVE,
    "num_steps": POSITIVE,
    "optimizer.lr": RATE._replace(note="a negative one trains by gradient ascent"),
    "optimizer.min_lr": Range(
        0, lambda c: (c.optimizer.lr, f"config.optimizer.lr={c.optimizer.lr}"), integer=False),
    "optimizer.cycle_steps": POSITIVE,
    "optimizer.restarts": Range(0, optional=True, note="None: as many as num_steps needs"),
    "optimizer.b1": Range(0, 1, integer=False, open_high=True),
    "optimizer.b2": Range(0, 1, integer=False, open_high=True),
    "loss_eps": RATE,
    "log_every": POSITIVE,
    "checkpoint_every": POSITIVE,
    "keep_checkpoints": Range(1, note="0 would discard every checkpoint"),
    "eval_every": Range(0, note="0 turns validation off"),
    "val.max_clips": Range(1, optional=True, note="None: all"),
    "eval.step": STEP,
    "eval.max_clips": Range(1, optional=True, note="None: all"),
    "eval.batch_size": POSITIVE,
    "eval.tile": TILE,
    "eval.tile_overlap": Range(0, _tile_high("eval"), multiple=FOUR),
    "export.step": STEP,
    "compare.step": Range(0, optional=True, note="None: the latest in both runs"),
    "infer.step": STEP,
    "infer.tile": TILE,
    "infer.tile_overlap": Range(0, _tile_high("infer"), multiple=FOUR),
    "infer.fps": RATE._replace(optional=True, note="None: the video's own"),
    "distributed.num_processes": Range(1, optional=True, note="None: auto-detected"),
    "distributed.process_id": Range(0, lambda c: (
        math.inf, "") if c.distributed.get("num_processes") is None else (
            c.distributed.num_processes - 1, "config.distributed.num_processes - 1"),
                                    optional=True, note="None: auto-detected"),
    "model.nf": Range(1, multiple=_groups),
    "model.groups": POSITIVE,
    "model.front_convs": COUNT,
    "model.front_rbs": COUNT,
    "model.nlrb_blocks": COUNT,
    "model.nlrb_embed": POSITIVE,
    "model.nlrb_chunk": POSITIVE,
    "model.scan_unroll": POSITIVE,
    "model.lmga_tau": POSITIVE,
    "model.lmga_layers": Range(1, note="model.use_lmga=False turns LMGA off"),
    "model.pfrdb_blocks": COUNT,
    "model.pfrdb_slope": Range(0, integer=False),
    "model.back_rbs": COUNT,
    "model.hr_features": POSITIVE,
}
DTYPE_FIELDS = ("eval.dtype", "infer.dtype")
SIDE_FIELDS = ("data.crop", "eval.tile", "infer.tile")  # square frames the model takes whole


def _bound(bound: Bound, config) -> tuple[float, str]:
  if callable(bound):
    return bound(config)
  return bound, f"{bound:g}"


def allowed(rule: Range, config) -> str:
  """The allowed values in words: "an integer >= 1", "a number in (0, 1)", "... or None"."""
  kind = "an integer" if rule.integer else "a number"
  low, low_text = _bound(rule.low, config)
  high, high_text = _bound(rule.high, config) if rule.high is not None else (math.inf, "")
  if high == math.inf:
    text = f"{kind} {'>' if rule.open_low else '>='} {low_text}"
  else:
    text = (f"{kind} in {'(' if rule.open_low else '['}{low_text}, {high_text}"
            f"{')' if rule.open_high else ']'}")
  if rule.multiple:
    text += f", a multiple of {rule.multiple(config)[1]}"
  if rule.optional:
    text += ", or None"
  return text + (f" ({rule.note})" if rule.note else "")


def _fits(rule: Range, value, config) -> bool:
  if value is None:
    return rule.optional
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  if rule.integer and not isinstance(value, int):
    return False
  if not math.isfinite(value):
    return False
  low, _ = _bound(rule.low, config)
  high, _ = _bound(rule.high, config) if rule.high is not None else (math.inf, "")
  if value < low or (rule.open_low and value == low) or value > high or (
      rule.open_high and value == high):
    return False
  return not rule.multiple or value % rule.multiple(config)[0] == 0


def _values(config, path: str):
  """(dotted path, value) of the fields that `path` (with "*" for any key, or any item of a
  tuple: `data.stills_scales.1`) names in `config`."""
  head, _, rest = path.partition(".")
  keys = list(config.keys()) if head == "*" else [head] if head in config else []
  for key in keys:
    value = config[key]
    if not rest:
      yield key, value
    elif isinstance(value, ml_collections.ConfigDict):
      yield from ((f"{key}.{p}", v) for p, v in _values(value, rest))
    elif isinstance(value, (tuple, list)) and rest == "*":
      yield from ((f"{key}.{i}", v) for i, v in enumerate(value))


def check(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the first field whose value `RULES` (or the model's choices)
  does not allow: "config.FIELD: VALUE; expected ..."."""
  if "model" in config:
    try:
      ModelSpec.from_config(config.model)  # the model's choices, e.g. model.dtype
    except ValueError as e:
      raise ValueError(f"config.{e}" if str(e).startswith("model.") else str(e)) from None
  for path, rule in RULES.items():
    for field, value in _values(config, path):
      if not _fits(rule, value, config):
        raise ValueError(f"config.{field}: {value!r}; expected {allowed(rule, config)}")
  for path in SIDE_FIELDS if "model" in config else ():
    for field, value in _values(config, path):
      if isinstance(value, int) and value > (side := max_side(config)):
        raise ValueError(f"config.{field}: {value}; the model cannot index frames that large (its "
                         f"deformable sampling has int32 indices: (side + 1)^2 x model.groups < "
                         f"2^31): at most {side} for model.groups={config.model.groups}")
  dtypes = (None,) + CHOICES["dtype"]
  for path in DTYPE_FIELDS:
    for field, value in _values(config, path):
      if value not in dtypes:
        raise ValueError(f"config.{field}: {value!r}; expected one of {dtypes} (None: as trained)")
