"""Reproducibility: a seed per random stream, the run manifest and the comparison of two runs.

- Streams: `config.seed` seeds every random stream; `config.seeds.params` (initial parameters),
  `.data` (order, crops, augmentation) and `.lmga` (LMGA's random global pools, Sec. 3.3) each
  override one, so that a study varies one source of randomness and holds the others.
- Manifest: every start of a run appends an entry to WORKDIR/manifest.json: library versions,
  backend, devices and processes, XLA_FLAGS and config.deterministic, the git commit of the code
  (and whether it had local changes), a hash of the resolved config, and the fingerprints of the
  starting parameters (`fingerprint.tree_hash`) and of the first global batch
  (`fingerprint.global_batch_hash`, the same on any number of processes).
- Compare (`--mode=compare --workdir=A --config.compare.other=B`): configs, environments, every
  logged value and fingerprint, and the parameters of a checkpoint step both runs hold.
"""

import importlib.metadata
import json
import math
import os
import subprocess
import sys
import time

import jax
import numpy as np

from megan_jax import checkpointing, fingerprint, logging_utils, report, run_config, workdir_lock

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")
# config fields that do not change what is computed: listed by `compare`, not counted as differences
NO_EFFECT = ("compare", "eval", "infer", "export", "data.workers", "data.read_threads",
             "async_checkpointing", "compilation_cache_dir", "distributed", "final_eval",
             "keep_checkpoints")
TIMING = ("time", "steps_per_sec", "clips_per_sec", "eta_sec")  # logged, but not results


def stream_seed(seed: int, seeds, stream: str) -> int:
  """The seed of `stream` ("params", "data" or "lmga"): `seeds.<stream>` when set, else `seed`."""
  value = (seeds or {}).get(stream)
  return seed if value is None else int(value)


def rng_streams(seed: int, seeds=None) -> dict[str, np.ndarray]:
  """The named random streams of a run, as uint32 key data (2,): "params" and "lmga_init" (the
  initialisation) from seeds.params, "lmga" (the training pools, folded with the step) from
  seeds.lmga. With `seeds` unset they are the three keys split from PRNGKey(seed)."""
  split = lambda stream: jax.random.split(jax.random.PRNGKey(stream_seed(seed, seeds, stream)), 3)
  (params, lmga_init, _), lmga = split("params"), split("lmga")[2]
  return {"params": np.asarray(params), "lmga_init": np.asarray(lmga_init),
          "lmga": np.asarray(lmga)}


def _git(*args) -> str | None:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if not os.path.exists(os.path.join(root, ".git")):
    return None
  try:
    out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10,
                         check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


def environment(config) -> dict:
  """What a run ran on: versions, backend, devices, processes, XLA flags, code commit."""
  versions = {"python": sys.version.split()[0]}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  kinds = {}
  for d in jax.devices():
    kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
  commit = _git("rev-parse", "HEAD")
  status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
  return {"versions": versions, "backend": jax.default_backend(), "devices": kinds,
          "device_count": jax.device_count(), "process_count": jax.process_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "deterministic": bool(config.deterministic),
          "git_commit": commit, "git_local_changes": bool(status) if commit else None}


def config_dict(config) -> dict:
  """The resolved config as plain JSON values (FieldReferences followed)."""
  return json.loads(config.to_json_best_effort())


def read_manifest(workdir: str) -> list[dict]:
  path = os.path.join(workdir, logging_utils.MANIFEST_NAME)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_manifest(workdir: str, config, start_step: int, params, batch_print: str | None) -> None:
  """Appends this start's entry to WORKDIR/manifest.json (process 0 only).

  params: the starting parameters (initial or restored); batch_print: the fingerprint of the
  first global batch of this start (`fingerprint.global_batch_hash`, over what every process
  read), or None when there is nothing to train.
  """
  prints = {"params": fingerprint.tree_hash(params)}
  if batch_print is not None:
    prints["batch"] = batch_print
  if jax.process_index() != 0:
    return
  entry = {"time": time.time(), "start_step": int(start_step), **environment(config),
           "config_hash": fingerprint.json_hash(config_dict(config)), "fingerprints": prints}
  report.write_json(os.path.join(workdir, logging_utils.MANIFEST_NAME),
                    read_manifest(workdir) + [entry])


def _diff(a: dict, b: dict) -> dict[str, str]:
  """{key: "value_a vs value_b"} of the flattened keys whose values differ (a key one side lacks
  counts as None: a config field added since, unset)."""
  a, b = run_config.flat(a), run_config.flat(b)
  return {k: f"{a.get(k)!r} vs {b.get(k)!r}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _listed(diff: dict[str, str]) -> str:
  return "; ".join(f"{k} ({v})" for k, v in diff.items())


def _read_run(workdir: str) -> tuple[dict, list[dict], dict[int, dict]]:
  """(config, manifest entries, {step: merged log record}) of a run folder; ValueError if none."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"compare: {workdir} is not a folder; give two run folders "
                            f"(--workdir=A --config.compare.other=B)")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    if busy := workdir_lock.holder(workdir):
      raise ValueError(f"compare: {workdir} is being written by a running training ({busy}) that "
                       f"has not recorded its config.json yet; rerun in a moment")
    raise ValueError(f"compare: {workdir} is not a run folder (no config.json); give the "
                     f"--workdir of a training run")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
    records = logging_utils.read_jsonl(workdir)
    manifest = read_manifest(workdir)
  except ValueError as e:
    raise ValueError(f"compare: {workdir}: a file is not valid JSON ({e})") from e
  logged = {}
  for r in records:
    logged.setdefault(r["step"], {}).update(
        {k: v for k, v in run_config.flat(r).items() if k != "step" and k not in TIMING})
  return config, manifest, logged


def _config_lines(a: dict, b: dict) -> tuple[list[str], bool]:
  diff = _diff(a, b)
  no_effect = lambda k: any(k == f or k.startswith(f + ".") for f in NO_EFFECT)
  counted = {k: v for k, v in diff.items() if not no_effect(k)}
  other = {k: v for k, v in diff.items() if no_effect(k)}
  lines = [f"configs: {'agree' if not counted else 'differ: ' + _listed(counted)}"]
  if other:
    lines.append(f"  (settings that do not change the results differ: {_listed(other)})")
  return lines, not counted


def _environment_lines(a: list[dict], b: list[dict]) -> list[str]:
  if not a or not b:
    return ["environments: unknown (no manifest.json in " +
            " and ".join(n for n, m in (("A", a), ("B", b)) if not m) + ")"]
  strip = lambda e: {k: v for k, v in e.items() if k not in ("time", "start_step", "fingerprints",
                                                             "config_hash")}
  diff = _diff(strip(a[-1]), strip(b[-1]))
  starts = f" ({len(a)} and {len(b)} starts; the latest compared)"
  return [f"environments: {'agree' if not diff else 'differ: ' + _listed(diff)}{starts}"]


def _log_lines(a: dict[int, dict], b: dict[int, dict]) -> tuple[list[str], bool]:
  common = sorted(set(a) & set(b))
  lines = []
  if set(a) != set(b):
    lines.append(f"logged steps differ: A has {len(a)} (up to {max(a, default=0)}), B has "
                 f"{len(b)} (up to {max(b, default=0)}); {len(common)} in both")
  # a checkpoint's fingerprints are logged when it is saved: a run that saved at a step the other
  # did not (stopped by a signal there, another checkpoint_every) has them on one side only
  one_sided = lambda k, x, y: k.startswith("fingerprints.") and (x is None or y is None)
  unsaved = []
  for step in common:
    keys = sorted(set(a[step]) | set(b[step]))
    fields = [f"{k} {a[step].get(k)!r} vs {b[step].get(k)!r}" for k in keys
              if a[step].get(k) != b[step].get(k) and not one_sided(k, a[step].get(k),
                                                                  b[step].get(k))]
    if fields:
      lines.append(f"first difference at step {step}: " + "; ".join(fields[:6]))
      return lines, False
    if any(one_sided(k, a[step].get(k), b[step].get(k)) for k in keys):
      unsaved.append(step)
  printed = sum(1 for s in common if any(k.startswith("fingerprints.") for k in a[s])
                and s not in unsaved)
  lines.append(f"logs: all {len(common)} common steps agree (losses and the fingerprints of "
               f"{printed} checkpoints, bit for bit)")
  if unsaved:
    lines.append(f"  (steps {unsaved}: one run saved a checkpoint there and the other did not; "
                 f"nothing to compare, not a difference)")
  return lines, set(a) == set(b)


def module_differences(a, b) -> dict[str, tuple[float, float]]:
  """{top-level module: (max |a - b|, max |a - b| / max |a|)} of two parameter trees."""
  out = {}
  for name in sorted(a):
    xs = [np.asarray(x, np.float64) for x in jax.tree.leaves(a[name])]
    ys = [np.asarray(y, np.float64) for y in jax.tree.leaves(b[name])]
    abs_diff = max((float(np.max(np.abs(x - y), initial=0)) for x, y in zip(xs, ys)), default=0.)
    scale = max((float(np.max(np.abs(x), initial=0)) for x in xs), default=0.)
    out[name] = (abs_diff, abs_diff / scale if scale else math.inf if abs_diff else 0.)
  return out


def _checkpoint_lines(a: str, b: str, step: int | None) -> tuple[list[str], bool]:
  for attempt in range(5):  # a run that is training may delete the common step while it is read
    steps_a = checkpointing.saved_steps(checkpointing.checkpoint_dir(a))
    steps_b = checkpointing.saved_steps(checkpointing.checkpoint_dir(b))
    common = sorted(set(steps_a) & set(steps_b))
    if step is None and not common:
      return [f"checkpoints: no step in both (A {steps_a}, B {steps_b})"], True
    chosen = common[-1] if step is None else step
    for name, have, run in (("A", steps_a, a), ("B", steps_b, b)):
      if chosen not in have:
        busy = workdir_lock.holder(run)
        running = (f"; {run} is being written by a running training ({busy}), which keeps only "
                   f"its last checkpoints" if busy else "")
        raise ValueError(f"config.compare.step: run {name} has no checkpoint of step {chosen} "
                         f"(it has {have}){running}")
    try:
      pa, pb = (checkpointing.restore_params(w, chosen)[0] for w in (a, b))
      break
    except (checkpointing.CheckpointError, FileNotFoundError):
      deleted = any(chosen not in checkpointing.saved_steps(checkpointing.checkpoint_dir(w))
                    for w in (a, b))
      if step is not None or not deleted or attempt == 4:
        raise
  step = chosen
  try:
    checkpointing.check_shapes(pb, pa, f"checkpoint step {step} of B")
  except checkpointing.ArchitectureError as e:
    return [f"checkpoint step {step}: the models differ ({str(e).split('(', 1)[-1]}"], False
  diffs = module_differences(pa, pb)
  same = all(d == 0 for d, _ in diffs.values())
  lines = [f"checkpoint step {step}: parameters {'identical' if same else 'differ'}; max abs / "
           f"max relative difference per module:"]
  lines += [f"  {name:<24} {d:.3g} / {r:.3g}" for name, (d, r) in diffs.items()]
  return lines, same


def compare(a: str, b: str, step: int | None = None) -> tuple[list[str], bool]:
  """(report lines, identical) for run folders `a` and `b`; `step`: the checkpoint to diff (None:
  the latest in both). Identical: the same config (fields in NO_EFFECT aside) and the same logged
  values and fingerprints at every logged step, bit for bit. Environments are reported only."""
  (conf_a, man_a, log_a), (conf_b, man_b, log_b) = _read_run(a), _read_run(b)
  lines = [f"A {os.path.abspath(a)}", f"B {os.path.abspath(b)}"]
  config_lines, same_config = _config_lines(conf_a, conf_b)
  log_lines, same_logs = _log_lines(log_a, log_b)
  ckpt_lines, same_params = _checkpoint_lines(a, b, step)
  identical = same_config and same_logs and same_params
  lines += config_lines + _environment_lines(man_a, man_b) + log_lines + ckpt_lines
  lines.append("result: identical" if identical else "result: the runs differ")
  return lines, identical


def compare_main(config, workdir: str) -> int:
  """--mode=compare: prints the comparison of `workdir` with config.compare.other; 0 when the
  runs are identical, 1 when not (bad input raises, for main's one-line error and exit code 2)."""
  other = config.compare.other
  if not other:
    raise ValueError("config.compare.other: not set; give the second run folder, "
                     "--config.compare.other=DIR")
  lines, identical = compare(workdir, other, config.compare.step)
  print("\n".join(lines))
  return 0 if identical else 1
