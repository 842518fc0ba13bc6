"""PSNR-Y per frame of each clip, one line per method (eval's `<set>/psnr_y_per_frame.png`).

The values are the per-frame scores of `evaluate.evaluate_sequences`, the same numbers as the
set's JSON files; interpolated frames (no LR input: odd offsets in the window that scores them)
are shaded. A set with more than `MAX_CLIPS` clips shows the `MAX_CLIPS` where the model gains
least over the baseline (its mean PSNR-Y minus the baseline's), so the plot shows where it loses.
Drawn with matplotlib's Agg canvas (no display, no pyplot state).
"""

import functools
import os

import numpy as np
from matplotlib import font_manager, ft2font
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_CLIPS = 12


@functools.cache
def _glyphs() -> frozenset:
  """The characters the default font draws."""
  return frozenset(ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties()))
                   .get_charmap())


def drawable(text: str) -> str:
  """`text` with the characters the font lacks written as escapes (\\u65e5): a clip named in
  another script stays told apart, without matplotlib's "Glyph ... missing" warnings."""
  return "".join(c if ord(c) in _glyphs() or c == "\n" else
                 c.encode("ascii", "backslashreplace").decode() for c in text)


def per_frame_series(results: dict) -> list[dict]:
  """[{"name", "index": [...], "interpolated": [...], "psnr_y": {method: [...]}}, ...], a dict
  per clip, from `evaluate_sequences` results {method: res} of one set (all methods score the
  same frames)."""
  methods = list(results)
  series = []
  for clips in zip(*(results[m]["clips"] for m in methods)):
    first = clips[0]
    for method, clip in zip(methods, clips):
      if clip["name"] != first["name"] or [f["index"] for f in clip["frames"]] != [
          f["index"] for f in first["frames"]]:
        raise ValueError(f"plots: {method} scored other frames of {first['name']} than "
                         f"{methods[0]}")
    series.append({"name": first["name"], "index": [f["index"] for f in first["frames"]],
                   "interpolated": [f["interpolated"] for f in first["frames"]],
                   "psnr_y": {m: [f["psnr_y"] for f in c["frames"]]
                              for m, c in zip(methods, clips)}})
  return series


def clips_to_plot(series: list, model: str, baseline: str | None) -> tuple[list, str]:
  """The clips of `per_frame_series` to draw (all, or `MAX_CLIPS` of them) and a note saying
  which they are."""
  if len(series) <= MAX_CLIPS:
    return series, ""
  if baseline is None:
    return series[:MAX_CLIPS], f"the first {MAX_CLIPS} of {len(series)} clips"
  gain = lambda s: np.mean(np.asarray(s["psnr_y"][model]) - np.asarray(s["psnr_y"][baseline]))
  return (sorted(series, key=gain)[:MAX_CLIPS],
          f"{MAX_CLIPS} of {len(series)} clips: those where {model} gains least over {baseline}")


def plot_psnr_per_frame(path: str, results: dict, *, title: str, model: str,
                        baseline: str | None = None) -> list[dict]:
  """Writes the PNG `path`: a panel per clip, PSNR-Y against frame index for every method in
  `results`, interpolated frames shaded. Returns the series drawn (`per_frame_series`)."""
  shown, note = clips_to_plot(per_frame_series(results), model, baseline)
  fig = Figure(figsize=(8, 0.6 + 2.2 * len(shown)), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
  for ax, clip in zip(axes, shown):
    for x, interpolated in zip(clip["index"], clip["interpolated"]):
      if interpolated:
        ax.axvspan(x - 0.5, x + 0.5, color="0.9", lw=0)
    for method, values in clip["psnr_y"].items():
      y = np.asarray(values, np.float64)
      ax.plot(clip["index"], np.where(np.isfinite(y), y, np.nan), marker=".",
              label=drawable(method))
    means = ", ".join(f"{m} {np.mean(v):.2f}" for m, v in clip["psnr_y"].items())
    ax.set_title(drawable(f"{clip['name']} (mean {means} dB)"), fontsize=9, loc="left")
    ax.set_ylabel("PSNR-Y (dB)")
    ax.grid(alpha=0.3)
  axes[-1].set_xlabel("frame (shaded: interpolated, no LR input)")
  axes[0].legend(fontsize=8, loc="best")
  fig.suptitle(drawable(f"{title}: PSNR-Y per frame" + (f"\n{note}" if note else "")),
               fontsize=10)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=80)
  return shown
