"""Fingerprints: a short hash of the exact bytes of a pytree, the checksum of every checkpoint,
and the data fingerprint of a run (`DataPrint`: what every process read).

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
from jax.experimental import multihost_utils

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


def state_fingerprints(state: Any, data_state: Any = None, data_print: str | None = None
                       ) -> dict[str, str]:
  """{"params", "opt_state"[, "data"]}: hashes of a train state (or of {"params": ...}) and the
  data fingerprint: `data_print` (`DataPrint.value()`, what training read) when given, else the
  hash of the grain iterator state `data_state` (the position in the data, a small dict)."""
  parts = state if isinstance(state, dict) else {"params": state.params,
                                                 "opt_state": state.opt_state}
  prints = {name: tree_hash(parts[name]) for name in ("params", "opt_state") if name in parts}
  if data_print is not None:
    prints["data"] = data_print
  elif data_state is not None:
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


def batch_hash(digests: np.ndarray, chained_to: str = "") -> str:
  """16 hex digits of SHA-256 over `chained_to` (a previous hash, or "") and the examples'
  digests of one global batch, uint8 (G, d) in global order."""
  h = hashlib.sha256(chained_to.encode())
  h.update(np.ascontiguousarray(digests, np.uint8).tobytes())
  return h.hexdigest()[:DIGITS]


def global_digests(local: np.ndarray) -> np.ndarray:
  """The digests of every process's examples in global order: uint8 (k, G, d) from this
  process's (k, B, d) of k steps (process p's rows are [p B, (p + 1) B) of each global batch).
  A collective: every process must call it."""
  local = np.asarray(local, np.uint8)
  if jax.process_count() == 1:
    return local
  gathered = multihost_utils.process_allgather(
      {"process": np.int32(jax.process_index()), "digests": local})
  order = np.argsort(gathered["process"])  # (P,): rows in process order
  per_process = np.asarray(gathered["digests"])[order]  # (P, k, B, d)
  k = local.shape[0]
  return per_process.transpose(1, 0, 2, 3).reshape(k, -1, local.shape[-1])


def global_batch_hash(local_digests) -> str:
  """`batch_hash` of the global batch whose slice (B, d) this process read: the same on any
  number of processes (a collective)."""
  return batch_hash(global_digests(np.asarray(local_digests)[None])[0])


class DataPrint:
  """The data fingerprint of a run: a hash chain over the global batches read so far,
  data_s = batch_hash(digests of global batch s, data_{s-1}), data_0 = "". It is a function of
  the examples read (their bytes, in the global order), not of how processes split them: a run
  on 1 process and one on 2 that read the same batches have the same print, and runs that read
  different examples have different ones. A resume continues the chain from the print saved
  with its checkpoint."""

  def __init__(self, start: str = ""):
    self._value = start
    self._pending = []  # this process's (B, d) digests of the steps not chained yet

  def add(self, local_digests) -> None:
    """Records this process's slice (B, d) of the next global batch."""
    self._pending.append(np.asarray(local_digests, np.uint8))

  def value(self) -> str:
    """The chain after every added batch (a collective when several processes run)."""
    if self._pending:
      for digests in global_digests(np.stack(self._pending)):
        self._value = batch_hash(digests, self._value)
      self._pending = []
    return self._value
