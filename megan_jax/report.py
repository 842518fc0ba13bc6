"""Reporting: the Table 1 style results table, JSON files, side-by-side PNG crops, "wrote" lines."""

import json
import os

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


def side_by_side_image(panels: list, *, box=None, zoom: int = 1, gap: int = 4) -> np.ndarray:
  """Labelled panels [(label, uint8 (H, W, 3)), ...] in a row: uint8 (14 + H', W', 3).

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
  return np.asarray(canvas)


def wrote_lines(wrote) -> str:
  """`wrote PATH  (what)` lines for [(path, what), ...], paths absolute and aligned."""
  paths = [os.path.abspath(p) for p, _ in wrote]
  width = max(map(len, paths))
  return "\n".join(f"wrote {p:<{width}}  ({what})" for p, (_, what) in zip(paths, wrote))
