"""Reporting: the Table 1 style results table, JSON files, side-by-side PNG crops, progress line."""

import json
import math
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw


def results_table(summary: dict, *, markdown: bool = False, datasets=None) -> str:
  """Table 1 layout: rows = methods, columns = datasets, cells "PSNR/SSIM" (Y channel).

  `summary` is {method: {dataset: {"psnr_y": float, "ssim_y": float, ...}}}; a missing cell
  prints as "-". Columns follow `datasets`, else their first appearance in `summary`.
  """
  if datasets is None:
    datasets = list(dict.fromkeys(d for per_method in summary.values() for d in per_method))
  head = ["Method"] + list(datasets)
  rows = [[method] + [_cell(per_method.get(d)) for d in datasets]
          for method, per_method in summary.items()]
  if markdown:
    lines = [head, ["---"] + [":---:"] * len(datasets)] + rows
    return "\n".join("| " + " | ".join(r) + " |" for r in lines) + "\n"
  widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
  fmt = lambda r: "  ".join(s.ljust(wd) if i == 0 else s.rjust(wd)
                            for i, (s, wd) in enumerate(zip(r, widths)))
  rule = "-" * len(fmt(head))
  return "\n".join([fmt(head), rule] + [fmt(r) for r in rows]) + "\n"


def _cell(mean: dict | None) -> str:
  if mean is None:
    return "-"
  return f"{mean['psnr_y']:.2f}/{mean['ssim_y']:.4f}"


def _plain(obj):
  """numpy scalars and arrays -> Python numbers and lists, for json."""
  if isinstance(obj, dict):
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return _plain(obj.tolist())
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


def write_json(path: str, obj) -> str:
  """Writes `obj` as indented JSON (written to a temporary file, then renamed). Returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(_plain(obj), f, indent=1)
  os.replace(tmp, path)
  return path


def write_text(path: str, text: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return path


def save_png(path: str, frame: np.ndarray) -> str:
  """Saves a uint8 (H, W, 3) frame."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(np.asarray(frame, np.uint8)).save(path)
  return path


def center_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a centred square crop of side at most `size`."""
  h, w = min(size, height), min(size, width)
  return (height - h) // 2, (width - w) // 2, h, w


def side_by_side(panels: list, path: str, *, box=None, zoom: int = 1, gap: int = 4) -> str:
  """Saves labelled panels [(label, uint8 (H, W, 3)), ...] in a row as one PNG.

  `box` = (top, left, h, w) crops every panel the same way; `zoom` enlarges the crops with
  nearest-neighbour so that pixels stay visible.
  """
  crops = []
  for label, img in panels:
    img = np.asarray(img, np.uint8)
    if box is not None:
      top, left, h, w = box
      img = img[top:top + h, left:left + w]
    crops.append((label, np.repeat(np.repeat(img, zoom, 0), zoom, 1)))
  label_h = 14
  h = max(c.shape[0] for _, c in crops)
  total_w = sum(c.shape[1] for _, c in crops) + gap * (len(crops) - 1)
  canvas = Image.new("RGB", (total_w, h + label_h), "white")
  draw = ImageDraw.Draw(canvas)
  x = 0
  for label, c in crops:
    canvas.paste(Image.fromarray(c), (x, label_h))
    draw.text((x + 2, 1), label, fill="black")
    x += c.shape[1] + gap
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  canvas.save(path)
  return path


class Progress:
  """A one-line progress bar on stderr: `desc [#####.....] done/total  rate/s  eta`."""

  def __init__(self, total: int, desc: str = "", *, enabled: bool = True, stream=None,
               min_interval: float = 0.5):
    self.total, self.desc, self.enabled = total, desc, enabled
    self.stream = stream or sys.stderr
    self.done, self.start, self.min_interval = 0, time.monotonic(), min_interval
    self._last = -math.inf

  def update(self, n: int = 1) -> None:
    self.done += n
    now = time.monotonic()
    if self.enabled and (now - self._last >= self.min_interval or self.done >= self.total):
      self._last = now
      self.stream.write("\r" + self._line(now))
      self.stream.flush()

  def _line(self, now: float) -> str:
    elapsed = max(now - self.start, 1e-9)
    rate = self.done / elapsed
    frac = min(self.done / self.total, 1.0) if self.total else 1.0
    bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
    eta = (self.total - self.done) / rate if rate > 0 else math.inf
    eta_s = f"{eta:.0f}s" if math.isfinite(eta) else "?"
    return f"{self.desc} [{bar}] {self.done}/{self.total}  {rate:.2f}/s  eta {eta_s}  "

  def close(self) -> None:
    if self.enabled:
      self.stream.write("\r" + self._line(time.monotonic()) + "\n")
      self.stream.flush()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
