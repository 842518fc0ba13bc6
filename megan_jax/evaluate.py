"""Evaluation with the standard STVSR protocol (Zooming Slow-Mo, MEGAN Sec. 4.1).

A sequence is cut into windows of 2n+1 = 7 GT frames with stride 6 plus a tail window that ends
at the final frame (`data.windows.stvsr_windows`); the GT is modcropped to 4, the n+1 = 4 LR
inputs are the MATLAB bicubic x1/4 of the window's odd frames (`data.pipeline.iter_eval_windows`).
Every frame of a sequence is scored exactly once: PSNR-Y, SSIM-Y and PSNR-RGB of the output
rounded to uint8 (`metrics`), averaged over a clip's frames, then over clips. A Vimeo test clip is
a 7-frame sequence, i.e. one window with all 7 frames scored.
"""

import os
import re

import numpy as np

from megan_jax import metrics, paths, pretrained, report
from megan_jax.progress import bar as progress_bar
from megan_jax.baseline import bicubic_blend_np
from megan_jax.data import testsets
from megan_jax.data.imresize import imresize_np
from megan_jax.data.pipeline import SCALE, iter_eval_windows, open_eval_dataset
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
    for win in iter_eval_windows(seq, num_input_frames=num_input_frames):
      if batch and (len(batch) == batch_size or batch[0][1]["lr"].shape != win["lr"].shape):
        yield batch
        batch = []
      batch.append((seq, win))
  if batch:
    yield batch


def _clip_mean(frames: list) -> dict:
  return {k: float(np.mean([f[k] for f in frames])) for k in METRICS}


def evaluate_sequences(predict_fn, sequences, *, num_input_frames: int = 4,
                       max_clips: int | None = None, batch_size: int = 1, progress: bool = True,
                       desc: str = "eval", save_dir: str | None = None) -> dict:
  """Scores `predict_fn` on `sequences` (each frame once) and returns the results.

  Returns {"mean": {metric: float}, "num_clips", "num_frames",
           "clips": [{"name", "num_frames", "mean": {metric: float},
                      "frames": [{"index", "psnr_y", "ssim_y", "psnr_rgb"}, ...]}, ...]}
  where the dataset mean is the mean over clips of each clip's mean over its frames.
  `batch_size` windows of equal size go through `predict_fn` together; with `save_dir` the
  output frames are written as `save_dir/<clip>/<index>.png`.
  """
  sequences = list(sequences)[:max_clips]
  if not sequences:
    raise ValueError(f"{desc}: no sequences to evaluate")
  scores = {id(seq): {} for seq in sequences}  # frame index -> metrics
  bar = None
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
        scores[id(seq)][index] = {k: fn(frame, gt) for k, fn in METRICS.items()}
        if save_dir is not None:
          report.save_png(os.path.join(save_dir, seq.name, f"{index:05d}.png"), frame)
        done += 1
    if bar is None:  # after the first batch, which compiles: rate and ETA count from here
      bar = progress_bar(sum(s.num_frames for s in sequences), desc, unit="frame", initial=done,
                         shown=progress)
    else:
      bar.update(done)
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


def comparison_image(sequence, predict_fns: dict, *, num_input_frames: int = 4, offset: int = 3,
                     crop: int = 128, zoom: int = 2) -> np.ndarray:
  """Side-by-side crops of the first window's frame `offset`: LR bicubic | methods... | GT.

  For an interpolated frame (odd offset) the LR panel is the bicubic upscaling of the previous
  input frame, since that frame has no LR. Returns uint8 (H, W, 3).
  """
  win = next(iter_eval_windows(sequence, num_input_frames=num_input_frames))
  lr_frame = win["lr"][offset // 2]
  lr_up = metrics.to_uint8(imresize_np(lr_frame, SCALE))
  lr_label = "LR bicubic" if offset % 2 == 0 else "LR t-1 bicubic"
  panels = [(lr_label, lr_up)]
  for name, fn in predict_fns.items():
    panels.append((name, metrics.to_uint8(np.asarray(fn(win["lr"][None]))[0, offset])))
  gt = win["gt"][offset]
  panels.append(("GT", gt))
  box = report.center_box(gt.shape[0], gt.shape[1], crop)
  return report.side_by_side_image(panels, box=box, zoom=zoom)


def save_comparison(path: str, sequence, predict_fns: dict, **kwargs) -> str:
  """Saves `comparison_image(sequence, predict_fns, **kwargs)` as the PNG `path`."""
  return report.save_png(path, comparison_image(sequence, predict_fns, **kwargs))


def evaluate(config, workdir: str) -> dict:
  """Evaluates the checkpoint in `workdir` (the latest, or `config.eval.step`) and the baseline.

  Reads config.eval (the fields configs/vimeo.py declares): datasets (list of specs, see
  `data.pipeline.open_eval_dataset`, each with an optional `name`), replaced by the Table 1 sets in
  the paper's column order when any of vid4, vimeo, adobe is set (`data.testsets`), step,
  max_clips, batch_size, tile, tile_overlap, dtype, baseline, save_frames, save_crops, label,
  progress. A run started from `config.pretrained` also scores those parameters.
  Prints the Table 1 style table and writes under `workdir/eval/step_<step>/`:
  `<dataset>/<method>.json` (per-frame, per-clip and mean), `summary.json`, `table.txt`,
  `table.md`, `<dataset>/comparison.png`, and with save_frames `<dataset>/<method>/<clip>/*.png`;
  then prints a `wrote PATH (what)` line for each.
  Returns {"step", "dir", "summary": {method: {dataset: mean}}, "results": {dataset: {method: ...}}}.
  """
  ev = config.eval
  specs = testsets.table1_specs(ev, config.data.get("lr_root")) or ev.datasets
  if not specs:
    raise ValueError("config.eval.datasets is empty: nothing to evaluate; set it or "
                     "--config.eval.vid4/vimeo/adobe=ROOT (Table 1 sets)")
  num_input_frames = config.data.num_input_frames
  predict_fn, step = restore_predict_fn(config, workdir, step=ev.step, tile=ev.tile,
                                        tile_overlap=ev.tile_overlap, dtype=ev.dtype)
  label = ev.label or config.model.name.upper()
  methods = {label: predict_fn}
  if config.pretrained and step != 0:  # the run was started from (or fine-tunes) these
    params, _ = pretrained.load(config.pretrained)
    methods[f"{config.model.name.upper()} ({pretrained.short_name(config.pretrained)})"] = (
        make_predict_fn(build_model(config.model), params, dtype=ev.dtype, tile=ev.tile,
                        tile_overlap=ev.tile_overlap))
  if ev.baseline:
    methods[BASELINE] = baseline_predict_fn
  out_dir = paths.writable_dir(os.path.join(workdir, "eval", f"step_{step}"), "--workdir")
  summary = {m: {} for m in methods}
  results, wrote = {}, []  # wrote: (path, what)
  for spec in specs:
    name = dataset_name(spec)
    sequences = open_eval_dataset(spec)[:ev.max_clips]
    results[name] = {}
    for method, fn in methods.items():
      frames_dir = (os.path.join(out_dir, _slug(name), _slug(method))
                    if ev.save_frames else None)
      res = evaluate_sequences(fn, sequences, num_input_frames=num_input_frames,
                               batch_size=ev.batch_size, progress=ev.progress,
                               desc=f"{name} {method}",
                               save_dir=frames_dir)
      wrote.append((report.write_json(os.path.join(out_dir, _slug(name), f"{_slug(method)}.json"),
                                      {"dataset": name, "method": method, "step": step, **res}),
                    f"{method} scores per frame and clip"))
      if frames_dir is not None:
        wrote.append((frames_dir, f"{method} output frames"))
      results[name][method] = res
      summary[method][name] = res["mean"]
    if ev.save_crops:
      wrote.append((save_comparison(os.path.join(out_dir, _slug(name), "comparison.png"),
                                    sequences[0], {m: methods[m] for m in reversed(methods)},
                                    num_input_frames=num_input_frames),
                    f"{name} side-by-side crops"))
  table = report.results_table(summary)
  print(f"step {step}: PSNR-Y/SSIM-Y\n{table}", end="")
  wrote += [
      (report.write_text(os.path.join(out_dir, "table.txt"), table), "this table"),
      (report.write_text(os.path.join(out_dir, "table.md"),
                         report.results_table(summary, markdown=True)), "this table in Markdown"),
      (report.write_json(os.path.join(out_dir, "summary.json"), {"step": step, "summary": summary}),
       "the mean scores")]
  print(report.wrote_lines(wrote), flush=True)
  return {"step": step, "dir": out_dir, "summary": summary, "results": results}
