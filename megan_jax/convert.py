r"""Converts an official Zooming Slow-Mo checkpoint into a checkpoint of the `:zsm` model.

    python -m megan_jax.convert --from=zsm xiang2020zooming.pth --workdir=runs/zsm_official
    python -m megan_jax.main --mode=eval --config=configs/vimeo.py:zsm --workdir=runs/zsm_official

CHECKPOINT is the state_dict of the official `LunaTokis` (Xiang et al., CVPR 2020) as a `.pth`
(torch.save zip format, or the legacy format of PyTorch < 1.6; read without PyTorch by
`megan_jax.torch_pickle`, whose unpickler refuses anything but tensors and dicts) or a `.npz` of
the same tensors. It may be nested under 'state_dict', 'params' or 'model', and its names may
carry DataParallel's 'module.' prefix.

Architecture fields read off the state_dict (everything else is the `:zsm` structure):
  model.nf          = rows of conv_first.weight
  model.groups      = rows of pcd_align.L1_dcnpack_1.conv_offset_mask.weight / 27
  model.front_rbs   = number of feature_extraction.N blocks
  model.back_rbs    = number of recon_trunk.N blocks
  model.hr_features = rows of HRconv.weight
The official model is nf=64, groups=8, front_rbs=5, back_rbs=40, hr_features=64, the `:zsm`
defaults; for any other values the converter prints the --config.model overrides to pass.

Every tensor is accounted for: a tensor without a counterpart in the model, a tensor the model
needs but the file lacks, or a shape that does not fit is an error naming the tensors. Convs go
from PyTorch's OIHW to flax's HWIO; nothing else changes (same deformable offset layout, gate
order and PixelShuffle channel order).

The result is a params-only checkpoint at step 0 (`checkpointing.save_params`): `--mode=eval` and
`--mode=infer` restore it like any checkpoint, and `--mode=train` fine-tunes from it with a fresh
optimiser state and data order.
"""

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from megan_jax import checkpointing, config_file, npz, paths, torch_pickle
from megan_jax.models import build_model, model_config

NEST_KEYS = ("state_dict", "params", "model")
PREFIX = "module."
TAPS = 9  # 3x3 deformable kernel: the offset/mask conv has 3 * groups * 9 rows

# A PCD_Align's branches `_1` and `_2` are the two directions of MEGAN Eq. (4)-(5).
_PCD = [pair for d, way in ((1, "forward"), (2, "backward")) for pair in (
    (f"L{{l}}_offset_conv{{k}}_{d}", f"{way}/l{{l}}_offset_conv{{k}}/Conv_0"),
    (f"L{{l}}_fea_conv_{d}", f"{way}/l{{l}}_fea_conv/Conv_0"),
    (f"L{{l}}_dcnpack_{d}", f"{way}/l{{l}}_dcn"),
    (f"L{{l}}_dcnpack_{d}.conv_offset_mask", f"{way}/l{{l}}_dcn/conv_offset_mask/Conv_0"))]
_PYRAMID = [("fea_L{l}_conv{k}", "pyramid/l{l}_conv{k}/Conv_0")]
# (official module, :zsm module), either way; {l}, {k}, {i} stand for numbers kept as they are.
# Eq. (6) is `fusion`, the deformable ConvLSTM of Eq. (7)-(11) is `ConvBLSTM` (one set of weights
# for both directions, as in the official code).
ZSM_MODULES = [
    ("conv_first", "front/conv_first/Conv_0"),
    ("feature_extraction.{i}.conv{k}", "front/rb{i}/conv{k}/Conv_0"),
    *_PYRAMID,
    *[("pcd_align." + t, "interp/pcd/" + f) for t, f in _PCD],
    ("fusion", "interp/fusion/Conv_0"),
    ("ConvBLSTM.forward_net.cell_list.0.conv", "convlstm/cell/gates/Conv_0"),
    *[(f"ConvBLSTM.forward_net.pcd_{s}." + t, f"convlstm/cell/align_{s}/" + f)
      for s in "hc" for t, f in _PYRAMID + [("pcd_align." + t, "pcd/" + f) for t, f in _PCD]
      + [("fusion", "fusion/Conv_0")]],
    ("ConvBLSTM.conv_1x1", "convlstm/fusion/Conv_0"),
    ("recon_trunk.{i}.conv{k}", "recon/rb{i}/conv{k}/Conv_0"),
    ("upconv1", "recon/upsampler/up1/Conv_0"),
    ("upconv2", "recon/upsampler/up2/Conv_0"),
    ("HRconv", "recon/upsampler/hr_conv/Conv_0"),
    ("conv_last", "recon/upsampler/conv_last/Conv_0"),
]
LEAVES = (("weight", "kernel"), ("bias", "bias"))


class ConversionError(ValueError):
  """The checkpoint does not fit the model; the message names the tensors."""


def _regex(template: str, sep: str) -> re.Pattern:
  parts = re.split(r"\{(\w)\}", template)
  body = "".join(re.escape(p) if i % 2 == 0 else rf"(?P<{p}>\d+)" for i, p in enumerate(parts))
  leaves = "|".join(a if sep == "." else b for a, b in LEAVES)
  return re.compile(rf"{body}{re.escape(sep)}(?P<leaf>{leaves})")


_TO_FLAX = [(_regex(t, "."), f) for t, f in ZSM_MODULES]
_TO_TORCH = [(_regex(f, "/"), t) for t, f in ZSM_MODULES]


def _rename(name: str, rules: list, leaves: dict, sep: str) -> str | None:
  for pattern, target in rules:
    if m := pattern.fullmatch(name):
      numbers = {k: int(v) for k, v in m.groupdict().items() if k != "leaf"}
      return target.format(**numbers) + sep + leaves[m["leaf"]]
  return None


def to_flax(name: str) -> str | None:
  """'pcd_align.L1_dcnpack_2.weight' -> 'interp/pcd/backward/l1_dcn/kernel' (None: unknown)."""
  return _rename(name, _TO_FLAX, dict(LEAVES), "/")


def to_torch(path: str) -> str:
  """The inverse of `to_flax`: the official name of a `:zsm` parameter path (else the path)."""
  return _rename(path, _TO_TORCH, {b: a for a, b in LEAVES}, ".") or path


def _is_tensor_dict(obj) -> bool:
  return isinstance(obj, dict) and any(isinstance(v, np.ndarray) for v in obj.values())


def find_state_dict(obj, where: str) -> dict:
  """The {name: array} state_dict in a loaded file, found under NEST_KEYS, 'module.' stripped."""
  while isinstance(obj, dict) and not _is_tensor_dict(obj):
    key = next((k for k in NEST_KEYS if isinstance(obj.get(k), dict)), None)
    if key is None:
      raise ConversionError(
          f"{where}: no state_dict found: the top-level keys are {sorted(map(str, obj))[:10]}; "
          f"expected tensor names or one of {NEST_KEYS}")
    obj, where = obj[key], f"{where}['{key}']"
  if not _is_tensor_dict(obj):
    raise ConversionError(
        f"{where}: holds a {type(obj).__name__}, expected a state_dict of tensors")
  bad = sorted(str(k) for k, v in obj.items()
               if not isinstance(v, np.ndarray) or not isinstance(k, str))
  if bad:
    raise ConversionError(f"{where}: entries that are not tensors: {bad[:10]}")
  out = {}
  for name, value in obj.items():
    short = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if short in out:
      raise ConversionError(f"{where}: {short} appears twice (with and without {PREFIX!r})")
    out[short] = value
  return out


def read_state_dict(path: str) -> dict:
  """{official name: numpy array} from a .pth (zip or legacy) or .npz file."""
  if path.lower().endswith(".npz"):
    flat = npz.read(path)
    for key in NEST_KEYS:  # np.savez of a nested dict flattens it to 'state_dict/name' or '.name'
      for sep in ("/", "."):
        if flat and all(k.startswith(key + sep) for k in flat):
          flat = {k[len(key) + 1:]: v for k, v in flat.items()}
    return find_state_dict(flat, path)
  return find_state_dict(torch_pickle.load(path), path)


def _anchor(tensors: dict, name: str, field: str) -> np.ndarray:
  if name not in tensors:
    raise ConversionError(f"missing tensor {name}, from which model.{field} is read; "
                          f"is this a Zooming Slow-Mo (LunaTokis) state_dict?")
  return tensors[name]


def infer_fields(tensors: dict) -> dict:
  """model.nf, groups, front_rbs, back_rbs and hr_features as an official state_dict has them."""
  offsets = _anchor(tensors, "pcd_align.L1_dcnpack_1.conv_offset_mask.weight", "groups").shape[0]
  if offsets % (3 * TAPS):
    raise ConversionError(f"pcd_align.L1_dcnpack_1.conv_offset_mask.weight has {offsets} rows, "
                          f"not a multiple of {3 * TAPS} (3 x groups x 9)")
  blocks = lambda prefix: len({m[1] for n in tensors if (m := re.match(rf"{prefix}\.(\d+)\.", n))})
  return {"nf": _anchor(tensors, "conv_first.weight", "nf").shape[0],
          "groups": offsets // (3 * TAPS),
          "front_rbs": blocks("feature_extraction"), "back_rbs": blocks("recon_trunk"),
          "hr_features": _anchor(tensors, "HRconv.weight", "hr_features").shape[0]}


def _to_flax_array(leaf: str, value: np.ndarray) -> np.ndarray:
  return np.transpose(value, (2, 3, 1, 0)) if leaf == "kernel" and value.ndim == 4 else value


def _torch_shape(leaf: str, shape: tuple) -> tuple:
  return (shape[3], shape[2], shape[0], shape[1]) if leaf == "kernel" and len(shape) == 4 else shape


def _names(names, limit: int = 12) -> str:
  names = sorted(names)
  return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def zsm_params(tensors: dict, fields: dict) -> dict:
  """The `:zsm` params tree (with `fields` set) holding `tensors`, every one of them used once."""
  cfg = model_config("zsm")
  cfg.update(fields)
  model = build_model(cfg)
  x = jnp.zeros((1, 2, 16, 16, 3), jnp.float32)  # (B, n+1, H, W, 3)
  abstract = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "lmga": jax.random.key(1)}, x, train=False))["params"]
  expected = {"/".join(k.key for k in p): v.shape
              for p, v in jax.tree_util.tree_leaves_with_path(abstract)}
  mapped = {name: to_flax(name) for name in tensors}
  problems = []
  if unmapped := [n for n, p in mapped.items() if p is None]:
    problems.append(f"tensors without a counterpart in Zooming Slow-Mo: {_names(unmapped)}")
  if extra := [n for n, p in mapped.items() if p is not None and p not in expected]:
    problems.append(f"tensors beyond the architecture {fields}: {_names(extra)}")
  have = {p for p in mapped.values() if p is not None}
  if missing := [to_torch(p) for p in expected if p not in have]:
    problems.append(f"missing tensors: {_names(missing)}")
  wrong = []
  for name, path in mapped.items():
    if path in expected:
      leaf = path.rsplit("/", 1)[1]
      want = _torch_shape(leaf, tuple(expected[path]))
      if tensors[name].shape != want:
        wrong.append(f"{name} {tuple(tensors[name].shape)} (expected {want})")
  if wrong:
    problems.append(f"shape mismatches for {', '.join(f'model.{k}={v}' for k, v in fields.items())}"
                    f" (read off the state_dict, see --help): {_names(wrong)}")
  if problems:
    raise ConversionError("; ".join(problems))
  params = {}
  for name, path in mapped.items():
    node = params
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = jnp.asarray(_to_flax_array(leaf, tensors[name]), jnp.float32)
  return params


def overrides(fields: dict) -> list[str]:
  """The --config.model flags that make configs/vimeo.py:zsm match `fields`."""
  default = model_config("zsm")
  return [f"--config.model.{k}={v}" for k, v in fields.items() if default[k] != v]


def convert(path: str, workdir: str) -> tuple[dict, str]:
  """Converts the official ZSM checkpoint at `path` into `workdir`.

  Returns (the model fields read off the state_dict, the checkpoint directory written)."""
  tensors = read_state_dict(path)
  try:
    fields = infer_fields(tensors)
    params = zsm_params(tensors, fields)
  except ConversionError as e:  # before the workdir is made: a wrong file leaves no empty folder
    raise ConversionError(f"{path}: {e}") from None
  paths.writable_dir(workdir, "--workdir")  # raises OSError naming it (a file, read-only, ...)
  return fields, checkpointing.save_params(workdir, params)


FLAGS = flags.FLAGS
flags.DEFINE_enum("from", "zsm", ["zsm"], "Format of CHECKPOINT: 'zsm', the official Zooming "
                  "Slow-Mo state_dict (.pth zip or legacy format, or .npz).")
flags.DEFINE_string("workdir", None, "Run directory to create; must hold no checkpoints yet.",
                    required=True)


def _die(message: str, code: int):
  sys.stderr.write(f"megan_jax.convert: error: {message}\n")
  sys.exit(code)


def _parse(argv):
  """absl flag parsing with one-line errors; logs at WARNING unless --verbosity is given."""
  try:
    with config_file.help_exits_zero(argv):
      rest = FLAGS(argv)
  except flags.Error as e:
    _die(f"{e} (see --help)", 2)
  if FLAGS["verbosity"].using_default_value:  # absl would log at INFO; orbax logs every step
    FLAGS.verbosity = logging.WARNING
  return rest


def main(argv):
  if len(argv) != 2:
    _die(f"give one CHECKPOINT file, got {argv[1:]} (see --help)", 2)
  path, workdir = argv[1], FLAGS.workdir
  try:
    fields, written = convert(path, workdir)
  except ValueError as e:
    _die(str(e), 1)
  except OSError as e:
    _die(paths.describe_os_error(e), 1)
  extra = " ".join(overrides(fields))
  print(f"{path}: Zooming Slow-Mo with {', '.join(f'{k}={v}' for k, v in fields.items())}\n"
        f"wrote the step-0 checkpoint {written}; evaluate it with\n"
        f"  python -m megan_jax.main --mode=eval --config=configs/vimeo.py:zsm "
        f"--workdir={workdir}{' ' + extra if extra else ''}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
