"""The mutation check (issue 31): one-line bugs that the fast tests must catch.

    python tests/mutants.py              # every mutant, after a baseline run of the chosen tests
    python tests/mutants.py -k lmga      # the mutants whose name contains 'lmga'
    python tests/mutants.py -k lmga,eval # ... 'lmga' or 'eval'
    python tests/mutants.py --list       # the mutants and their tests, nothing run
    python tests/mutants.py --no-baseline

Each mutant is a (name, file, exact original snippet, replacement, description, tests) entry. The
snippet must occur exactly once in the file. Every mutant is applied to a fresh temporary COPY of the
repository (the working tree is never touched); the chosen tests (pytest node ids, a few seconds to a
minute each) run there with PYTHONPATH pointing at the copy, stopping at the first failure. A mutant
is killed when a test (or its fixture) fails (pytest exit status 1); it SURVIVED when they all pass; any other exit
status (a collection error, an interrupted run) is reported as ERROR. The baseline runs every chosen
test once on an unmutated copy first: a kill only means something if the tests pass without the bug.
The table goes to stdout; the exit status is 1 when a mutant survived or errored (or the baseline
failed), 0 otherwise. No test of tests/test_pretrained.py may kill a mutant (it is refused here).
This file is not collected by pytest (its name does not start with test_). docs/TESTING.md has the
measured time.
"""

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "*.egg-info", "runs")


@dataclasses.dataclass(frozen=True)
class Mutant:
  name: str
  file: str      # relative to the repository root
  old: str       # the exact original snippet, found exactly once
  new: str
  what: str
  tests: tuple   # pytest node ids, relative to the repository root


EQ = "tests/test_equations.py"
LMGA_EQ13 = EQ + "::test_lmga_eq13_aggregation_matches_a_numpy_loop_over_nodes_and_neighbours"
READ = "tests/test_readings.py"
MODELS = "tests/test_models.py"
CONVERT = "tests/test_convert.py::test_each_format_reproduces_the_official_output[zsm_small_state_dict.npz]"
DEFORM = ("tests/test_deform_conv.py::test_matches_numpy_loop[1-1-1-1-True-True-4-jnp]",
          "tests/test_deform_conv.py::test_matches_numpy_loop[2-2-1-2-True-True-4-jnp]")
WINDOWS = "tests/test_windows.py"
PIPE = "tests/test_pipeline.py"
METRICS = "tests/test_metrics.py"
TRAIN = "tests/test_train.py"
REPRO = "tests/test_repro.py"
CHOICES = "tests/test_eval_choices.py"

MUTANTS = [
    # models/
    Mutant("lmga_adjacency_transposed", "megan_jax/models/lmga.py",
           'jnp.einsum("btpqhw,btqhwc->btphwc", adj, x)', 'jnp.einsum("btqphw,btqhwc->btphwc", adj, x)',
           "Eq. (13) sums A_qp X_q instead of A_pq X_q (issue 31)", (LMGA_EQ13,)),
    Mutant("lmga_graph_conv_without_lrelu", "megan_jax/models/lmga.py",
           'x = lrelu(conv(c, f"graph{k}")(x))', 'x = conv(c, f"graph{k}")(x)',
           "Eq. (13) without its LeakyReLU", (LMGA_EQ13,)),
    Mutant("lmga_softmax_over_columns", "megan_jax/models/lmga.py",
           "return jax.nn.softmax(logits, axis=3).astype(x.dtype)",
           "return jax.nn.softmax(logits, axis=2).astype(x.dtype)",
           "adjacency normalised along columns, not rows", (READ + "::test_softmax_of_a_node_runs_over_its_neighbours",)),
    Mutant("lmga_shared_graph_rebuilt", "megan_jax/models/lmga.py",
           'if self.graph == "per_layer" or k == 1:', 'if True:',
           "'shared' rebuilds the graph from every layer's input", (LMGA_EQ13,)),
    Mutant("lmga_output_not_key_node", "megan_jax/models/lmga.py",
           "key = x[:, :, 0]  # (B, T, H, W, C): the key frame's node", "key = x[:, :, 1]",
           "the refinement reads a global-pool node instead of the key", (LMGA_EQ13,)),
    Mutant("lmga_eval_pool_off_by_one", "megan_jax/models/lmga.py",
           "np.linspace(0, num_frames - 1, tau)", "np.linspace(1, num_frames - 1, tau)",
           "the evaluation pool starts at frame 1", (READ + "::test_global_pool_is_one_pool_per_clip_drawn_from_every_frame",)),
    Mutant("interleave_swapped", "megan_jax/models/megan.py",
           "feats = jnp.concatenate([pyramid[0][:, :-1, None], mid[:, :, None]], 2)",
           "feats = jnp.concatenate([mid[:, :, None], pyramid[0][:, :-1, None]], 2)",
           "synthesised features at even positions, observed at odd (issue 31)",
           (EQ + "::test_interleave_puts_observed_frames_at_even_and_synthesised_at_odd_positions",)),
    Mutant("convlstm_input_forget_swapped", "megan_jax/models/convlstm.py",
           "c_new = jax.nn.sigmoid(f) * c_aligned + jax.nn.sigmoid(i) * jnp.tanh(g)",
           "c_new = jax.nn.sigmoid(i) * c_aligned + jax.nn.sigmoid(f) * jnp.tanh(g)",
           "Eq. (11): input and forget gates swapped", (CONVERT,)),
    Mutant("convlstm_directions_swapped", "megan_jax/models/convlstm.py",
           "fused = jnp.concatenate([hs[:b], hs[b:, ::-1]], -1)",
           "fused = jnp.concatenate([hs[b:, ::-1], hs[:b]], -1)",
           "backward hidden states fused first", (CONVERT,)),
    Mutant("pcd_offsets_not_doubled", "megan_jax/models/alignment.py",
           "off = jnp.concatenate([new_off, 2.0 * upsample2x_bilinear(off)], -1)",
           "off = jnp.concatenate([new_off, 1.0 * upsample2x_bilinear(off)], -1)",
           "upsampled coarse offsets not doubled", (CONVERT,)),
    Mutant("bilinear_upsample_wrong_neighbour", "megan_jax/models/layers.py",
           "even = 0.75 * x + 0.25 * prev", "even = 0.75 * x + 0.25 * nxt",
           "x2 bilinear: even pixels blend with the next neighbour", (CONVERT,)),
    Mutant("pixel_shuffle_axes", "megan_jax/models/layers.py",
           "return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))",
           "return x.transpose(0, 1, 5, 2, 4, 3).reshape(b, h * r, w * r, c // (r * r))",
           "PixelShuffle's sub-pixel rows and columns swapped", (CONVERT,)),
    Mutant("nlrb_softmax_over_queries", "megan_jax/models/nonlocal_block.py",
           "weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)",
           "weights = jax.nn.softmax(logits, axis=-2).astype(v.dtype)",
           "Eq. (1): attention normalised over queries",
           (MODELS + "::test_nonlocal_block_matches_numpy_reference",)),
    Mutant("nlrb_space_to_depth_order", "megan_jax/models/nonlocal_block.py",
           "x = x.reshape(n, h // r, r, w // r, r, d).transpose(0, 1, 3, 2, 4, 5)",
           "x = x.reshape(n, h // r, r, w // r, r, d).transpose(0, 1, 3, 4, 2, 5)",
           "space-to-depth in (dx, dy) order, not TensorFlow's (dy, dx)",
           (MODELS + "::test_nonlocal_block_matches_numpy_reference",)),
    Mutant("pfrdb_distill_without_activation", "megan_jax/models/reconstruction.py",
           'd = act(Conv(c, kernel=1, dtype=self.spec.dtype, name="distill")(stacked))',
           'd = Conv(c, kernel=1, dtype=self.spec.dtype, name="distill")(stacked)',
           "PFRDB distillation without LeakyReLU", (READ + "::test_pfrdb_matches_pfnl",)),
    Mutant("scan_unroll_reverses", "megan_jax/models/convlstm.py",
           "in_axes=1, out_axes=1, unroll=self.unroll)",
           "in_axes=1, out_axes=1, unroll=self.unroll, reverse=self.unroll > 1)",
           "an unrolled scan runs the other way in time (scan_unroll no longer speed only)",
           (EQ + "::test_scan_unroll_changes_speed_only",)),
    Mutant("bfloat16_output_off_by_20_percent", "megan_jax/models/megan.py",
           "out = out.astype(jnp.float32)  # (B, 2n+1, 4H, 4W, 3)",
           "out = out.astype(jnp.float32) * (1.2 if conv.dtype == jnp.bfloat16 else 1.0)",
           "bfloat16 output scaled by 1.2 (passed the old tolerance 0.05)",
           (MODELS + "::test_bfloat16_compute_keeps_float32_params",)),
    # kernels/
    Mutant("deform_dy_dx_swapped", "kernels/sampling.py",
           "py = ys[:, None, None, None] + tap_y + off[..., 0]",
           "py = ys[:, None, None, None] + tap_y + off[..., 1]",
           "offsets read as (dx, dy)", DEFORM),
    Mutant("deform_bilinear_weight", "kernels/sampling.py",
           "weights = jnp.stack([(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], -1)",
           "weights = jnp.stack([(1 - ly) * (1 - lx), ly * (1 - lx), (1 - ly) * lx, ly * lx], -1)",
           "bilinear corner weights of (y0, x0+1) and (y0+1, x0) swapped", DEFORM),
    Mutant("deform_border_off_by_one", "kernels/sampling.py",
           "inside = (y0 >= -1) & (y0 <= h - 1) & (x0 >= -1) & (x0 <= w - 1)",
           "inside = (y0 >= -1) & (y0 <= h - 2) & (x0 >= -1) & (x0 <= w - 1)",
           "samples in the last row's lower half dropped", ("tests/test_deform_conv.py::test_samples_on_and_beyond_the_border[jnp]",)),
    # data/: windows, crops, augmentation
    Mutant("windows_scored_off_by_one", "megan_jax/data/windows.py",
           "next_unscored = start + window", "next_unscored = start + window - 1",
           "the shared boundary frame scored twice", (WINDOWS,)),
    Mutant("windows_inputs_odd_offsets", "megan_jax/data/windows.py",
           "windows.append(Window(start, gt, gt[::2], scored))",
           "windows.append(Window(start, gt, gt[1::2] + gt[-1:], scored))",
           "the LR inputs taken from the odd offsets", (WINDOWS,)),
    Mutant("crop_gt_x_y_swapped", "megan_jax/data/augment.py",
           "gt_patch = gt[:, scale * y:scale * y + g, scale * x:scale * x + g]",
           "gt_patch = gt[:, scale * x:scale * x + g, scale * y:scale * y + g]",
           "the GT crop at (x, y) instead of (y, x)", (PIPE + "::test_lr_stays_aligned_with_gt",)),
    Mutant("crop_margin_too_small", "megan_jax/data/augment.py",
           "m = 2 * scale", "m = scale",
           "the LR crop's bicubic margin too narrow",
           (PIPE + "::test_lr_of_a_crop_equals_the_crop_of_the_full_frame_lr",)),
    Mutant("augment_reverses_lr_only", "megan_jax/data/augment.py",
           "return transform(lr, *flags), transform(gt, *flags)",
           "return transform(lr, *flags), transform(gt, *flags[:3], False)",
           "time reversal applied to the LR inputs but not the GT",
           (PIPE + "::test_lr_stays_aligned_with_gt",)),
    Mutant("downscale_truncates", "megan_jax/data/augment.py",
           "return np.clip(np.floor(small + 0.5), 0, 255).astype(np.uint8)",
           "return np.clip(np.floor(small), 0, 255).astype(np.uint8)",
           "LR frames truncated instead of rounded (not MATLAB's)", (PIPE + "::test_lr_stays_aligned_with_gt",)),
    Mutant("extra_windows_off_by_one", "megan_jax/data/mixed.py",
           "self.records += [(k, s) for s in range(count - window + 1)]",
           "self.records += [(k, s) for s in range(count - window)]",
           "data.extra: the last window of each sequence dropped", ("tests/test_mixed.py",)),
    Mutant("extra_concat_index_off_by_one", "megan_jax/data/mixed.py",
           'k = int(np.searchsorted(self._ends, i, side="right"))',
           'k = int(np.searchsorted(self._ends, i, side="left"))',
           "data.extra: a source's first record read from the source before it", ("tests/test_mixed.py",)),
    # metrics
    Mutant("metrics_y_weights_bgr", "megan_jax/metrics.py",
           "_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)",
           "_Y_WEIGHTS = np.array([24.966, 128.553, 65.481], dtype=np.float64)",
           "BT.601 weights applied in BGR order", (METRICS,)),
    Mutant("metrics_psnr_peak_not_squared", "megan_jax/metrics.py",
           "return float(10.0 * np.log10(_PEAK * _PEAK / mse))", "return float(10.0 * np.log10(_PEAK / mse))",
           "PSNR with 255 for 255^2", (METRICS,)),
    Mutant("metrics_ssim_c2", "megan_jax/metrics.py",
           "c1, c2 = (0.01 * _PEAK) ** 2, (0.03 * _PEAK) ** 2", "c1, c2 = (0.01 * _PEAK) ** 2, (0.01 * _PEAK) ** 2",
           "SSIM's K2 = 0.01", (METRICS,)),
    Mutant("metrics_mean_over_frames", "megan_jax/metrics.py",
           "return float(np.mean([np.mean(np.asarray(s, np.float64)) for s in per_clip.values()]))",
           "return float(np.mean(np.concatenate([np.asarray(s, np.float64) for s in per_clip.values()])))",
           "mean over all frames instead of frames then clips", (METRICS,)),
    # the loss and the schedule
    Mutant("charbonnier_eps_not_squared", "megan_jax/losses.py",
           "return jnp.mean(jnp.sqrt(diff * diff + eps * eps))", "return jnp.mean(jnp.sqrt(diff * diff + eps))",
           "Charbonnier with eps for eps^2", (TRAIN + "::test_charbonnier_matches_numpy",)),
    Mutant("schedule_floor_is_min_lr_not_ratio", "megan_jax/train.py",
           "cycle = optax.cosine_decay_schedule(opt.lr, opt.cycle_steps, alpha=opt.min_lr / opt.lr)",
           "cycle = optax.cosine_decay_schedule(opt.lr, opt.cycle_steps, alpha=opt.min_lr)",
           "the cosine's floor lr * min_lr instead of min_lr", (TRAIN + "::test_lr_schedule_is_cosine_with_restarts",)),
    Mutant("schedule_restart_late", "megan_jax/train.py",
           "[opt.cycle_steps * (i + 1) for i in range(cycles - 1)])",
           "[opt.cycle_steps * (i + 1) + 1 for i in range(cycles - 1)])",
           "warm restarts one step late", (TRAIN + "::test_lr_schedule_is_cosine_with_restarts",)),
    # what a user relies on beyond the numbers (issue 31)
    Mutant("validation_ignores_max_clips", "megan_jax/train_val.py",
           'self._sequences = open_eval_dataset(config.val)[:config.val.get("max_clips")]',
           "self._sequences = open_eval_dataset(config.val)",
           "validation scores every clip of config.val, not max_clips",
           ("tests/test_checkpointing.py::test_validation_during_training_keeps_the_best",)),
    Mutant("final_eval_never_runs", "megan_jax/train.py",
           "if last_logged is not None and config.final_eval:",
           "if last_logged is None and config.final_eval:",
           "config.final_eval does not evaluate after training",
           (CHOICES + "::test_final_eval_scores_the_last_checkpoint",)),
    Mutant("eval_ignores_chosen_step", "megan_jax/evaluate.py",
           "predict_fn, step = restore_predict_fn(config, workdir, step=ev.step, tile=ev.tile,",
           "predict_fn, step = restore_predict_fn(config, workdir, step=None, tile=ev.tile,",
           "eval scores the latest step whatever eval.step says",
           (CHOICES + "::test_eval_of_a_chosen_step_scores_that_checkpoint",)),
    Mutant("eval_tile_not_in_source", "megan_jax/evaluate.py",
           'source.update({f"eval.{k}": ev[k] for k in ("max_clips", "dtype", "tile", "tile_overlap")})',
           'source.update({f"eval.{k}": ev[k] for k in ("max_clips", "dtype")})',
           "a column scored on whole frames silently replaced by tiled scores",
           (CHOICES + "::test_eval_tile_is_part_of_what_a_column_was_scored_with",)),
    Mutant("infer_ignores_dtype", "megan_jax/infer.py",
           "tile_overlap=ic.tile_overlap, dtype=ic.dtype,",
           "tile_overlap=ic.tile_overlap, dtype=None,",
           "infer runs float32 whatever infer.dtype says",
           (CHOICES + "::test_eval_and_infer_of_tiny_megan_in_bfloat16_agree_end_to_end",)),
    Mutant("export_overwrite_keeps_old_file", "megan_jax/pretrained/__init__.py",
           "  save(output, params, meta)\n", "  if not os.path.exists(output):\n    save(output, params, meta)\n",
           "export with overwrite=True silently keeps the old file",
           (REPRO + "::test_export_of_a_chosen_step_replaces_the_file_when_asked",)),
    Mutant("export_ignores_chosen_step", "megan_jax/pretrained/__init__.py",
           "params, step = checkpointing.restore_params(workdir, config.export.step)",
           "params, step = checkpointing.restore_params(workdir)",
           "export writes the latest step whatever export.step says",
           (REPRO + "::test_export_of_a_chosen_step_replaces_the_file_when_asked",)),
    Mutant("manifest_without_commit", "megan_jax/repro.py",
           '"git_commit": commit, "git_local_changes": bool(status) if commit else None}',
           '"git_commit": None, "git_local_changes": False}',
           "the manifest never records the commit", (REPRO + "::test_manifest_records_the_git_commit_and_local_changes",)),
    Mutant("compare_counts_data_workers", "megan_jax/repro.py",
           'NO_EFFECT = ("compare", "eval", "infer", "export", "data.workers", "data.read_threads",',
           'NO_EFFECT = ("compare", "eval", "infer", "export", "data.read_threads",',
           "compare counts data.workers as a difference",
           (REPRO + "::test_compare_lists_settings_that_cannot_change_results_apart",)),
    Mutant("compare_ignores_chosen_step", "megan_jax/repro.py",
           "chosen = common[-1] if step is None else step",
           "chosen = common[-1] if common else step",
           "compare diffs the latest step whatever compare.step says",
           (REPRO + "::test_compare_of_a_chosen_step_diffs_that_checkpoint",)),
]


def copy_tree(dest: str) -> str:
  root = os.path.join(dest, "repo")
  shutil.copytree(REPO, root, symlinks=True, ignore=IGNORE)
  return root


def apply(root: str, m: Mutant) -> None:
  path = os.path.join(root, m.file)
  with open(path) as f:
    text = f.read()
  if text.count(m.old) != 1:
    raise SystemExit(f"mutant {m.name}: the snippet occurs {text.count(m.old)} times in {m.file}, "
                     f"expected once: {m.old!r}")
  with open(path, "w") as f:
    f.write(text.replace(m.old, m.new))


def run_tests(root: str, tests, stop_first: bool) -> tuple[int, list, str]:
  """(pytest exit status, failed node ids, output tail) of the tests in the copy at `root`."""
  env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE="1")
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *tests]
  if stop_first:
    cmd.insert(4, "-x")
  proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
  out = proc.stdout + proc.stderr
  failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)  # a test, or its fixture, failed
  return proc.returncode, failed, out[-3000:]


def check_imports_from(root: str) -> None:
  env = dict(os.environ, PYTHONPATH=root)
  where = subprocess.run([sys.executable, "-c", "import megan_jax; print(megan_jax.__file__)"],
                         cwd=root, env=env, capture_output=True, text=True, check=True).stdout.strip()
  if not where.startswith(root):
    raise SystemExit(f"the copy imports megan_jax from {where}, not from {root}")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("-k", default="", help="only the mutants whose name contains this (or one of "
                      "these, comma-separated)")
  parser.add_argument("--list", action="store_true", help="list the mutants and exit")
  parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
  args = parser.parse_args()
  mutants = [m for m in MUTANTS if any(k in m.name for k in args.k.split(","))]
  for m in mutants:
    if any("test_pretrained" in t for t in m.tests):
      raise SystemExit(f"mutant {m.name}: test_pretrained.py may not be the test that kills it")
  if args.list:
    for m in mutants:
      print(f"{m.name:36s} {m.file}: {m.what}\n{'':36s} tests: {' '.join(m.tests)}")
    return 0
  start = time.time()
  print(f"{len(mutants)} mutants; load average {os.getloadavg()[0]:.2f}; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
  bad = 0
  if not args.no_baseline:
    tests = sorted({t for m in mutants for t in m.tests})
    with tempfile.TemporaryDirectory(prefix="megan_mutant_") as tmp:
      root = copy_tree(tmp)
      check_imports_from(root)
      t0 = time.time()
      rc, failed, tail = run_tests(root, tests, stop_first=False)
    print(f"baseline: {len(tests)} test selections, exit {rc}, {time.time() - t0:.0f} s", flush=True)
    if rc != 0:
      print(tail)
      print("the baseline fails: fix the tests before reading the table")
      return 1
  rows = []
  for m in mutants:
    with tempfile.TemporaryDirectory(prefix="megan_mutant_") as tmp:
      root = copy_tree(tmp)
      apply(root, m)
      t0 = time.time()
      rc, failed, tail = run_tests(root, m.tests, stop_first=True)
    seconds = time.time() - t0
    if rc == 1 and failed:
      verdict = "killed by " + failed[0]
    elif rc == 0:
      verdict = "SURVIVED"
    else:
      verdict = f"ERROR (pytest exit {rc})"
    if not verdict.startswith("killed"):
      bad += 1
      print(tail)
    rows.append((m, verdict, seconds))
    print(f"{m.name:36s} {seconds:6.0f} s  {verdict}", flush=True)
  print("\n| mutant | file | what | result |\n| --- | --- | --- | --- |")
  for m, verdict, _ in rows:
    print(f"| {m.name} | {m.file} | {m.what} | {verdict} |")
  print(f"\n{len(rows) - bad}/{len(rows)} killed in {time.time() - start:.0f} s "
        f"(load average now {os.getloadavg()[0]:.2f})")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
