"""`--mode=config`: every config field with its value and a one-line description.

The descriptions are the comments where the fields are set, so they have one source: the comment
at the end of the first `c.<field> = ...` statement of a file (on its first or last line); comment
lines of their own are section headings or notes, never a field's description. They are read
from configs/vimeo.py (the reference definition of the fields the code reads), then
megan_jax/models/configs.py (the model fields, under `model.`), then the config file given (for
fields it adds), then the other files in configs/ (for a config built on another, as
configs/pretrain.py is on configs/demo.py); the first description found wins. The fields of an
evaluation set (`val`, a ConfigDict made by `eval_spec`) are described by configs/vimeo.py's
EVAL_SPEC_FIELDS. Any other field without one (the keys of a ConfigDict set as a whole, such as
`data.prescale`) shows its parent's.
"""

import ast
import glob
import io
import os
import tokenize

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ((os.path.join(REPO, "configs", "vimeo.py"), ""),
           (os.path.join(REPO, "megan_jax", "models", "configs.py"), "model."))
MAX_VALUE = 40  # characters of a value shown


def _attribute_path(node) -> str | None:
  """"a.b" for the target `c.a.b` (any root name), else None."""
  names = []
  while isinstance(node, ast.Attribute):
    names.append(node.attr)
    node = node.value
  return ".".join(reversed(names)) if names and isinstance(node, ast.Name) else None


def comments(source: str) -> dict[str, str]:
  """{field path: description} from the comments of the attribute assignments in `source`."""
  trailing = {}  # line number -> comment text, for comments after code
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT and tok.line[:tok.start[1]].strip():
      trailing[tok.start[0]] = tok.string.lstrip("#").strip()
  found = {}
  for node in ast.walk(ast.parse(source)):
    targets = (node.targets if isinstance(node, ast.Assign) else
               [node.target] if isinstance(node, ast.AnnAssign) else [])
    for target in targets:
      path = _attribute_path(target)
      if path is None or path in found:
        continue
      found[path] = trailing.get(node.lineno) or trailing.get(node.end_lineno) or ""
  return found


def spec_fields(source: str) -> dict[str, str]:
  """The EVAL_SPEC_FIELDS dict literal of `source` ({} when it has none)."""
  for node in ast.parse(source).body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "EVAL_SPEC_FIELDS"):
      return ast.literal_eval(node.value)
  return {}


def descriptions(config_path: str | None = None) -> dict[str, str]:
  """{field path: description} from `SOURCES` and the config file `config_path`."""
  out = {}
  others = tuple((p, "") for p in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))))
  for path, prefix in SOURCES + (((config_path, ""),) if config_path else ()) + others:
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8") as f:
      for field, text in comments(f.read()).items():
        if text and prefix + field not in out:
          out[prefix + field] = text
  return out


def fields(config: ml_collections.ConfigDict, prefix: str = ""):
  """Yields (path, value, is a field of an evaluation set) of every leaf field; a list is one
  field."""
  is_spec = "kind" in config and "root" in config
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from fields(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value, is_spec


def _show(value) -> str:
  """The value as written in Python; a list or tuple is cut to MAX_VALUE characters, a string (a
  path) is shown whole."""
  if isinstance(value, (list, tuple)):
    text = "[" + ", ".join(v.get("name", "{...}") if isinstance(v, ml_collections.ConfigDict)
                           else repr(v) for v in value) + "]"
  else:
    return repr(value)
  return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 3] + "..."


def describe(path: str, known: dict[str, str]) -> str:
  """The description of field `path`, else "part of <parent>: ..." of its nearest described
  parent, else "-"."""
  if known.get(path):
    return known[path]
  parts = path.split(".")
  for i in range(len(parts) - 1, 0, -1):
    parent = ".".join(parts[:i])
    if known.get(parent):
      return f"part of {parent}: {known[parent]}"
  return "-"


def listing(config: ml_collections.ConfigDict, config_file: str | None = None) -> str:
  """The `--mode=config` text: a header, then `field  value  description` per field."""
  config_path = config_file.partition(":")[0] if config_file else None
  known = descriptions(config_path)
  with open(SOURCES[0][0], encoding="utf-8") as f:
    spec = spec_fields(f.read())
  rows = [(path, _show(value),
           spec.get(path.rsplit(".", 1)[-1]) if is_spec and path.rsplit(".", 1)[-1] in spec
           else describe(path, known)) for path, value, is_spec in fields(config)]
  w_path = max(len(r[0]) for r in rows)
  w_value = min(max(len(r[1]) for r in rows), MAX_VALUE)  # a longer value (a path) runs over
  head = (f"Fields of {config_file or 'the config'}; set one with --config.<field>=<value> "
          f"(values shown with the overrides given)")
  return "\n".join([head] + [f"{p:<{w_path}}  {v:<{w_value}}  {d}" for p, v, d in rows])
