"""The configs a run was trained with: WORKDIR/config.json, then config.1.json, config.2.json, ...

A run records its config when it starts. A resumed run whose config differs from the newest
recorded one (another batch size, more steps) records it as the next config.<n>.json and says so
on screen, naming the fields that changed: the earlier configs are the run's history and are
never rewritten.
"""

import json
import os
import re

CONFIG_NAME = "config.json"
_NUMBERED = re.compile(r"config\.(\d+)\.json")


def config_paths(workdir: str) -> list[str]:
  """The recorded configs of `workdir`, oldest first: config.json, config.1.json, ..."""
  if not os.path.isdir(workdir):
    return []
  numbered = sorted((int(m.group(1)), name) for name in os.listdir(workdir)
                    if (m := _NUMBERED.fullmatch(name)))
  names = ([CONFIG_NAME] if os.path.exists(os.path.join(workdir, CONFIG_NAME)) else []) + [
      name for _, name in numbered]
  return [os.path.join(workdir, name) for name in names]


def load_latest(workdir: str) -> tuple[str, dict] | None:
  """(path, fields) of the newest readable recorded config, or None."""
  for path in reversed(config_paths(workdir)):
    try:
      with open(path, encoding="utf-8") as f:
        return path, json.load(f)
    except (OSError, ValueError):
      continue
  return None


def flat(tree: dict, prefix: str = "") -> dict:
  """{"a.b": value} for the nested dict {"a": {"b": value}}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def changed_fields(old: dict, new: dict) -> list[str]:
  """["batch_size (4 -> 8)", ...] for the dotted fields whose values differ."""
  old, new = flat(old), flat(new)
  return [f"{k} ({old.get(k, 'absent')!r} -> {new.get(k, 'absent')!r})"
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def record(workdir: str, config) -> str | None:
  """Records `config` (a ConfigDict) unless it equals the newest recorded config; returns a note
  naming the changed fields and the new file when it had to add one."""
  text = config.to_json_best_effort(indent=2)
  latest = load_latest(workdir)
  if latest is None:
    path = os.path.join(workdir, CONFIG_NAME)
  else:
    changed = changed_fields(latest[1], json.loads(text))
    if not changed:
      return None
    n = max([0] + [int(m.group(1)) for p in config_paths(workdir)
                   if (m := _NUMBERED.fullmatch(os.path.basename(p)))]) + 1
    path = os.path.join(workdir, f"config.{n}.json")
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  if latest is None:
    return None
  shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
  return (f"the config differs from {latest[0]}: {shown}; recorded it as {path} (the earlier "
          f"configs are kept)")
