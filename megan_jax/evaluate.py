"""Evaluation with the standard STVSR protocol (Zooming Slow-Mo, MEGAN Sec. 4, setup).

A sequence is cut into windows of 2n+1 = 7 GT frames with stride 6 plus a tail window that ends
at the final frame (`data.windows.stvsr_windows`); the GT is modcropped to 4, the n+1 = 4 LR
inputs are the MATLAB bicubic x1/4 of the window's odd frames (`data.pipeline.iter_eval_windows`).
Every frame of a sequence is scored exactly once: PSNR-Y, SSIM-Y and PSNR-RGB of the output
rounded to uint8 (`metrics`), averaged over a clip's frames, then over clips. A Vimeo test clip is
a 7-frame sequence, i.e. one window with all 7 frames scored.
"""

import os
import re

import jax
import numpy as np

from megan_jax import comparison, metrics, paths, plots, pretrained, report
from megan_jax.progress import bar as progress_bar
from megan_jax.baseline import bicubic_blend_np
from megan_jax.data import testsets
from megan_jax.data.pipeline import iter_eval_windows, open_eval_dataset
from megan_jax.data.sources import DataError
from megan_jax.models import build_model
from megan_jax.predict import make_predict_fn, restore_predict_fn

METRICS = {"psnr_y": metrics.psnr_y, "ssim_y": metrics.ssim_y, "psnr_rgb": metrics.psnr_rgb}
BASELINE = "Bicubic+blending"


def baseline_predict_fn(lr: np.ndarray) -> np.ndarray:
  """The bicubic + frame-blending baseline as a predict fn: (B, n+1, h, w, 3) -> (B, 2n+1, 4h, 4w, 3)."""
  return np.stack([bicubic_blend_np(clip) for clip in np.asarray(lr)])


def _batches(sequences, num_input_frames: int, batch_size: int):
  """Groups consecutive windows of equal LR shape: yields lists of (sequence, window dict)."""
  batch = []
  for seq in sequences:
    for win in _windows(seq, num_input_frames):
      if batch and (len(batch) == batch_size or batch[0][1]["lr"].shape != win["lr"].shape):
        yield batch
        batch = []
      batch.append((seq, win))
  if batch:
    yield batch


def _windows(seq, num_input_frames: int):
  """`iter_eval_windows` of `seq`; frames too small to score (less than 4 pixels a side, nothing
  is left once the GT is cut to multiples of 4) end in a line naming the clip."""
  try:
    yield from iter_eval_windows(seq, num_input_frames=num_input_frames)
  except ValueError as e:
    h, w = seq.read([0]).shape[1:3]
    if min(h, w) >= 4:
      raise
    raise DataError(f"{getattr(seq, 'path', seq.name)}: frames are {w}x{h} pixels; a clip to score "
                    f"needs at least 4x4 (the GT is cut to multiples of 4, the LR input is a "
                    f"quarter of it): leave it out of the test set") from e


def _clip_mean(frames: list) -> dict:
  return {k: float(np.mean([f[k] for f in frames])) for k in METRICS}


def evaluate_sequences(predict_fn, sequences, *, num_input_frames: int = 4,
                       max_clips: int | None = None, batch_size: int = 1, progress: bool = True,
                       desc: str = "eval", save_dir: str | None = None) -> dict:
  """Scores `predict_fn` on `sequences` (each frame once) and returns the results.

  Returns {"mean": {metric: float}, "num_clips", "num_frames",
           "clips": [{"name", "num_frames", "mean": {metric: float},
                      "frames": [{"index", "psnr_y", "ssim_y", "psnr_rgb", "interpolated"},
                                 ...]}, ...]}
  where the dataset mean is the mean over clips of each clip's mean over its frames, and
  "interpolated" says that the frame had no LR input (an odd offset in the window scoring it).
  `batch_size` windows of equal size go through `predict_fn` together; with `save_dir` the
  output frames are written as `save_dir/<clip>/<index>.png`.
  """
  sequences = list(sequences)[:max_clips]
  if not sequences:
    raise ValueError(f"{desc}: no sequences to evaluate")
  scores = {id(seq): {} for seq in sequences}  # frame index -> metrics
  bar = None
  try:
    for batch in _batches(sequences, num_input_frames, batch_size):
      out = predict_fn(np.stack([win["lr"] for _, win in batch]))  # (B, 2n+1, 4h, 4w, 3)
      done = 0
      for (seq, win), pred in zip(batch, np.asarray(out)):
        if pred.shape != win["gt"].shape:
          raise ValueError(f"{desc}/{seq.name}: prediction {pred.shape} != GT {win['gt'].shape}")
        for frame, gt, index, scored in zip(pred, win["gt"], win["gt_indices"], win["scored"]):
          if not scored:
            continue
          if index in scores[id(seq)]:
            raise RuntimeError(f"{desc}/{seq.name}: frame {index} scored twice")
          frame = metrics.to_uint8(frame)
          scores[id(seq)][index] = {**{k: fn(frame, gt) for k, fn in METRICS.items()},
                                    "interpolated": index not in win["input_indices"]}
          if save_dir is not None:
            report.save_png(os.path.join(save_dir, seq.name, f"{index:05d}.png"), frame)
          done += 1
      if bar is None:  # after the first batch, which compiles: rate and ETA count from here
        bar = progress_bar(sum(s.num_frames for s in sequences), desc, unit="frame", initial=done,
                           shown=progress)
      else:
        bar.update(done)
  finally:  # closed on an error or Ctrl-C too: an open bar is redrawn after the message
    if bar is not None:
      bar.close()
  clips = []
  for seq in sequences:
    got = scores[id(seq)]
    if sorted(got) != list(range(seq.num_frames)):
      missing = sorted(set(range(seq.num_frames)) - set(got))
      raise RuntimeError(f"{desc}/{seq.name}: frames {missing} were not scored")
    frames = [{"index": i, **got[i]} for i in sorted(got)]
    clips.append({"name": seq.name, "num_frames": seq.num_frames, "mean": _clip_mean(frames),
                  "frames": frames})
  mean = {k: metrics.mean_over_clips({str(i): [f[k] for f in c["frames"]]
                                      for i, c in enumerate(clips)}) for k in METRICS}
  return {"mean": mean, "num_clips": len(clips), "num_frames": sum(c["num_frames"] for c in clips),
          "clips": clips}


def dataset_name(spec) -> str:
  """The column name of an eval spec: `spec.name`, else Vimeo-<list> or the root's base name."""
  if spec.get("name"):
    return spec.name
  if spec.get("kind") == "vimeo":
    base = os.path.basename(str(spec.get("list_file") or "test"))
    return "Vimeo-" + os.path.splitext(base)[0].capitalize()
  base = spec.get("root") or spec.get("kind")
  return os.path.splitext(os.path.basename(os.path.normpath(str(base))))[0]


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def comparison_image(sequence, predict_fns: dict, *, num_input_frames: int = 4) -> np.ndarray:
  """The validation image: `comparison.crops` of the first window of `sequence`, comparing the
  first method of `predict_fns` with the baseline (added when missing). uint8 (H, W, 3)."""
  model = next(m for m in predict_fns if m != BASELINE)
  fns = {**predict_fns, BASELINE: predict_fns.get(BASELINE, baseline_predict_fn)}
  return comparison.crops(sequence, fns, model=model, baseline=BASELINE,
                          num_input_frames=num_input_frames)[0]


def _specs(config) -> list:
  """[(config field, spec), ...]: the sets given by root (`testsets.root_specs`), else
  config.eval.datasets."""
  ev = config.eval
  specs = testsets.root_specs(ev, config.data.get("lr_root"))
  if specs:
    return [(spec.field, spec) for spec in specs]
  if not ev.datasets:
    raise ValueError("config.eval.datasets is empty: nothing to evaluate; set it or "
                     "--config.eval.vid4/vimeo/adobe/folders=ROOT")
  return [(f"config.eval.datasets[{i}]", spec) for i, spec in enumerate(ev.datasets)]


def _source(spec, config) -> dict:
  """What a column's numbers depend on besides the checkpoint: the set and the eval settings."""
  source = {k: v for k, v in spec.to_dict().items() if k not in ("name", "field")}
  for key in ("root", "lr_root"):
    if isinstance(source.get(key), str):
      source[key] = os.path.abspath(source[key])
  ev = config.eval
  source.update({f"eval.{k}": ev[k] for k in ("max_clips", "dtype", "tile", "tile_overlap")})
  source["data.num_input_frames"] = config.data.num_input_frames
  return source


def _open_sets(specs, config) -> list:
  """[(name, field, source, sequences), ...] of `_specs`, every clip checked to hold at least one
  window (2n+1 frames): bad input ends here, in a line naming the config field and the path."""
  window = 2 * config.data.num_input_frames - 1
  sets, fields = [], {}
  for field, spec in specs:
    name = dataset_name(spec)
    if name in fields:
      raise ValueError(f"{field}: the test set name {name!r} is taken by {fields[name]}; set "
                       f"config.eval.folders_name (or the spec's name) to another column name")
    fields[name] = field
    try:
      sequences = open_eval_dataset(spec)[:config.eval.max_clips]
    except DataError as e:
      raise DataError(f"{field}: {e}") from e
    for seq in sequences:
      if seq.num_frames < window:
        raise DataError(f"{field}: {getattr(seq, 'path', seq.name)} has {seq.num_frames} frames; "
                        f"a clip needs at least {window} (2 config.data.num_input_frames - 1)")
    sets.append((name, field, _source(spec, config), sequences))
  return sets


def _same_params(a, b) -> bool:
  leaves = lambda fn: jax.tree_util.tree_leaves_with_path(fn.variables)
  return len(leaves(a)) == len(leaves(b)) and all(
      pa == pb and np.array_equal(np.asarray(x), np.asarray(y))
      for (pa, x), (pb, y) in zip(leaves(a), leaves(b)))


def _methods(config, predict_fn, step: int) -> dict:
  """The table's rows {label: predict fn}: the checkpoint, the `config.pretrained` parameters and
  the baseline. A step-0 checkpoint holds start parameters (packaged, exported or converted) that
  nothing was trained on here: it is labelled by what it holds, `MODEL (<pretrained name>)` when
  those are the config.pretrained parameters (then scored once), else `MODEL`; config.eval.label
  names a trained checkpoint."""
  ev, model = config.eval, config.model.name.upper()
  start = None
  if config.pretrained:
    params, _ = pretrained.load(config.pretrained)
    start = make_predict_fn(build_model(config.model), params, dtype=ev.dtype, tile=ev.tile,
                            tile_overlap=ev.tile_overlap)
    start_label = f"{model} ({pretrained.short_name(config.pretrained)})"
  if step == 0 and start is not None and _same_params(predict_fn, start):
    methods = {start_label: predict_fn}
  else:
    methods = {(ev.label or model) if step else model: predict_fn}
    if start is not None:
      methods[start_label] = start
  if ev.baseline:
    methods[BASELINE] = baseline_predict_fn
  return methods


def evaluate(config, workdir: str) -> dict:
  """Evaluates the checkpoint in `workdir` (the latest, or `config.eval.step`) and the baseline.

  Reads config.eval (the fields configs/vimeo.py declares): datasets (list of specs, see
  `data.pipeline.open_eval_dataset`, each with an optional `name`), replaced by the sets given by
  root when any of vid4, vimeo, adobe, folders is set (`data.testsets`), step, max_clips,
  batch_size, tile, tile_overlap, dtype, baseline, save_frames, save_crops, label, progress. A run
  started from `config.pretrained` also scores those parameters (`_methods` names the rows).
  Every clip is opened and checked before any scoring. Writes under `workdir/eval/step_<step>/`:
  `<dataset>/<method>.json` (per-frame, per-clip and mean), `<dataset>/psnr_y_per_frame.png`
  (`plots`), `<dataset>/comparison.png` (`comparison`, the frame and crop where the model gains
  most over the baseline), with save_frames `<dataset>/<method>/<clip>/*.png`, and the
  checkpoint's table `summary.json`, `table.txt`, `table.md` (`report.StepTable`: the sets of
  earlier runs keep their columns; a set of a taken name scored from another source is refused
  before any work). Prints the table and a `wrote PATH (what)` line for each file.
  Returns {"step", "dir", "summary": {method: {dataset: mean}} (the whole table),
  "results": {dataset: {method: ...}} (this run's)}.
  """
  ev = config.eval
  num_input_frames = config.data.num_input_frames
  specs = _specs(config)
  predict_fn, step = restore_predict_fn(config, workdir, step=ev.step, tile=ev.tile,
                                        tile_overlap=ev.tile_overlap, dtype=ev.dtype)
  sets = _open_sets(specs, config)
  methods = _methods(config, predict_fn, step)
  label = next(iter(methods))
  out_dir = paths.writable_dir(os.path.join(workdir, "eval", f"step_{step}"), "--workdir")
  table = report.StepTable(out_dir, step)
  for name, field, source, _ in sets:
    table.check(name, source, field)
  results, wrote = {}, []  # wrote: (path, what)
  for name, _, source, sequences in sets:
    results[name] = {}
    set_dir = os.path.join(out_dir, _slug(name))
    for method, fn in methods.items():
      frames_dir = os.path.join(set_dir, _slug(method)) if ev.save_frames else None
      res = evaluate_sequences(fn, sequences, num_input_frames=num_input_frames,
                               batch_size=ev.batch_size, progress=ev.progress,
                               desc=f"{name} {method}", save_dir=frames_dir)
      wrote.append((report.write_json(os.path.join(set_dir, f"{_slug(method)}.json"),
                                      {"dataset": name, "method": method, "step": step, **res}),
                    f"{method} scores per frame and clip"))
      if frames_dir is not None:
        wrote.append((frames_dir, f"{method} output frames"))
      results[name][method] = res
    baseline = BASELINE if ev.baseline else None
    plot = os.path.join(set_dir, "psnr_y_per_frame.png")
    plots.plot_psnr_per_frame(plot, results[name], title=f"{name}, step {step}", model=label,
                              baseline=baseline)
    wrote.append((plot, f"{name} PSNR-Y per frame of each clip"))
    if ev.save_crops:
      best = comparison.best_frame(results[name], label, BASELINE) if baseline else None
      seq, index, gain = (sequences[best[0]], *best[1:]) if best else (sequences[0], None, None)
      image, caption = comparison.crops(
          seq, {BASELINE: baseline_predict_fn, **dict(reversed(methods.items()))}, model=label,
          baseline=BASELINE, index=index, frame_gain=gain, num_input_frames=num_input_frames)
      wrote.append((report.save_png(os.path.join(set_dir, "comparison.png"), image), caption))
    table.add(name, source, {m: r["mean"] for m, r in results[name].items()})
    table_files = table.write()  # after each set: a later fault leaves the table complete so far
  print(f"step {step}: PSNR-Y/SSIM-Y\n"
        f"{report.results_table(table.summary, datasets=table.columns())}", end="")
  print(report.wrote_lines(wrote + table_files), flush=True)
  return {"step": step, "dir": out_dir, "summary": table.summary, "results": results}
