"""Fingerprints: a short hash of the exact bytes of a pytree, the checksum of every checkpoint.

One function, `tree_hash`, serves both uses: the run fingerprints logged at every checkpoint (two
runs, or a run and its resume, are the same exactly when their fingerprints are) and the checksum
that a restore verifies (a flipped bit in a checkpoint's array files changes it). It hashes, leaf by
leaf in tree order, the leaf's path, dtype, shape and raw bytes with SHA-256 (any change of one bit
changes the digest) and keeps the first 16 hex digits (64 bits). Arrays are read from one local
device: the train state is replicated, so every device holds the same bytes. The cost is that of
copying the arrays to the host and hashing them at about 1 GB/s (docs/BENCHMARKS.md).
"""

import hashlib
import json
from typing import Any

import jax
import numpy as np

DIGITS = 16


class CorruptCheckpointError(ValueError):
  """A restored checkpoint's bytes differ from those saved, or hold NaN/Inf."""


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def host_leaves(tree) -> list[tuple[str, np.ndarray]]:
  """[(path "a/b/kernel", host array)] of `tree`'s leaves in tree order."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  arrays = jax.device_get([leaf.addressable_data(0) if isinstance(leaf, jax.Array)
                           and leaf.is_fully_replicated else leaf for _, leaf in leaves])
  return [(_path(path), np.asarray(a)) for (path, _), a in zip(leaves, arrays)]


def _digest(leaves: list[tuple[str, np.ndarray]]) -> str:
  h = hashlib.sha256()
  for path, a in leaves:
    h.update(f"{path}:{a.dtype.str}:{a.shape};".encode())
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
  return h.hexdigest()[:DIGITS]


def tree_hash(tree) -> str:
  """16 hex digits of SHA-256 over the paths, dtypes, shapes and bytes of `tree`'s leaves."""
  return _digest(host_leaves(tree))


def json_hash(obj) -> str:
  """16 hex digits of SHA-256 of `obj` as canonical JSON (sorted keys): a config, a data state."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:DIGITS]


def state_fingerprints(state: Any, data_state: Any = None) -> dict[str, str]:
  """{"params", "opt_state"[, "data"]}: hashes of a train state (or of {"params": ...}) and of the
  grain iterator state `data_state` (the position in the data, a small dict)."""
  parts = state if isinstance(state, dict) else {"params": state.params,
                                                 "opt_state": state.opt_state}
  prints = {name: tree_hash(parts[name]) for name in ("params", "opt_state") if name in parts}
  if data_state is not None:
    prints["data"] = json_hash(data_state)
  return prints


def verify(tree, expected: str | None, what: str) -> None:
  """Raises CorruptCheckpointError when `tree` holds NaN/Inf or (with `expected`, the hash saved
  with it) when its bytes hash to something else; `what` names it ("params of step 4")."""
  leaves = host_leaves(tree)
  bad = [p for p, a in leaves if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all()]
  if bad:
    raise CorruptCheckpointError(f"{what}: non-finite values in {', '.join(bad[:3])}")
  if expected is not None and (got := _digest(leaves)) != expected:
    raise CorruptCheckpointError(f"{what}: checksum {got} differs from the {expected} saved "
                                 f"with it (the files changed after saving)")
