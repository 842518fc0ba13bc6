"""Reporting: the Table 1 style results table of a checkpoint (kept across runs), JSON files,
side-by-side PNG crops, "wrote" lines."""

import contextlib
import fcntl
import functools
import json
import os

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont


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


class StepTable:
  """The results table of one checkpoint, `DIR/summary.json`, `table.txt`, `table.md`, kept
  across runs: each run adds the test sets it scores as columns and never drops another's.

  summary.json = {"step", "summary": {method: {dataset: mean}}, "sources": {dataset: source}},
  `source` being what a column's numbers depend on besides the checkpoint (the set's spec and
  the eval settings). A set scored again from the same source replaces the cells of its column
  that it scores (the same numbers, unless the code changed), and only those; a set of the same
  name from another source is refused (`check`) before any work, as is a column whose source is
  not recorded: nothing a user has is overwritten.
  """

  def __init__(self, directory: str, step: int):
    self.path = os.path.join(directory, "summary.json")
    self.step = step
    self.summary, self.sources = self._read()
    self._added = {}  # this run's columns: name -> (source, {method: mean})

  def _read(self) -> tuple[dict, dict]:
    """(summary, sources) of the table on disk ({}, {} when there is none)."""
    if not os.path.exists(self.path):
      return {}, {}
    try:
      with open(self.path, encoding="utf-8") as f:
        saved = json.load(f)
      summary, sources = saved["summary"], saved.get("sources", {})
      if saved["step"] != self.step or not isinstance(summary, dict):
        raise ValueError(f"written for step {saved['step']}")
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{self.path}: cannot read the results already there ({e}); move the "
                       f"file away to start a new table") from e
    return summary, sources

  def check(self, name: str, source: dict, field: str) -> None:
    """Raises a ValueError naming `field` when column `name` holds numbers from another source."""
    if name in self.sources:
      old, new = self.sources[name], _plain(source)
      if old == new:
        return
      diff = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}"
                       for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
      reason = f"was scored with other settings ({diff})"
    elif any(name in per_method for per_method in self.summary.values()):
      reason = "is there with no record of what it was scored on"
    else:
      return
    raise ValueError(f"{field}: the column {name!r} of {self.path} {reason}; give this set "
                     f"another name (config.eval.folders_name, or the spec's name) or move the "
                     f"table away, so that its results are not overwritten")

  def add(self, name: str, source: dict, means: dict) -> None:
    """Sets the cells of column `name` of the methods in `means` ({method: mean})."""
    self._added[name] = (source, means)
    self._set(name, source, means)

  def _set(self, name: str, source: dict, means: dict) -> None:
    for method, mean in means.items():
      self.summary.setdefault(method, {})[name] = mean
    self.sources[name] = _plain(source)

  def columns(self) -> list:
    """Columns in the order they were first scored."""
    return list(dict.fromkeys(list(self.sources) + [d for m in self.summary.values() for d in m]))

  def write(self) -> list:
    """Writes the table files; returns [(path, what), ...].

    Two evals of one checkpoint may run at once (other test sets, or while a training runs): under
    an exclusive lock on the folder, the table is read again and this run's columns are set in it,
    so that the columns another run wrote since this one started are kept."""
    directory = os.path.dirname(self.path)
    with _locked(directory):
      self.summary, self.sources = self._read()
      for name, (source, means) in self._added.items():
        self._set(name, source, means)
      columns = self.columns()
      return [
          (write_text(os.path.join(directory, "table.txt"),
                      results_table(self.summary, datasets=columns)),
           "the table of this checkpoint"),
          (write_text(os.path.join(directory, "table.md"),
                      results_table(self.summary, markdown=True, datasets=columns)),
           "the table in Markdown"),
          (write_json(self.path, {"step": self.step, "summary": self.summary,
                                  "sources": self.sources}),
           "its mean scores and what they were scored on")]


@contextlib.contextmanager
def _locked(directory: str):
  """An exclusive `flock` on `directory` itself for the block (no lock file is left behind; the
  kernel drops it when the process ends, however it ends)."""
  os.makedirs(directory, exist_ok=True)
  fd = os.open(directory, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)


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
  """Writes `text` (to a temporary file, then renamed). Returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def save_png(path: str, frame: np.ndarray) -> str:
  """Saves a uint8 (H, W, 3) frame."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(np.asarray(frame, np.uint8)).save(path)
  return path


LABEL_LINE = 16  # pixels per text line above a panel
FONT_SIZE = 12   # of the labels: DejaVu Sans, the TrueType font matplotlib ships


@functools.lru_cache(maxsize=1)
def label_font() -> ImageFont.FreeTypeFont:
  """DejaVu Sans at FONT_SIZE pixels (PIL's built-in bitmap font runs words together)."""
  path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
  return ImageFont.truetype(path, FONT_SIZE)


def side_by_side_image(panels: list, *, box=None, zoom: int = 1, gap: int = 4,
                       caption: str = "") -> np.ndarray:
  """Labelled panels [(label, uint8 (H, W, 3)), ...] in a row: uint8 (LABEL_LINE L + H', W', 3).

  A label may have several lines ("\n"); L is the most lines of any label plus the lines of a
  `caption` across the top. `box` = (top, left, h, w) crops every panel the same way; `zoom`
  enlarges the crops with nearest-neighbour so that pixels stay visible. Text is `label_font`.
  """
  crops = []
  for label, img in panels:
    img = np.asarray(img, np.uint8)
    if box is not None:
      top, left, h, w = box
      img = img[top:top + h, left:left + w]
    crops.append((label, np.repeat(np.repeat(img, zoom, 0), zoom, 1)))
  top_h = LABEL_LINE * (caption.count("\n") + 1) if caption else 0
  label_h = top_h + LABEL_LINE * max(label.count("\n") + 1 for label, _ in crops)
  h = max(c.shape[0] for _, c in crops)
  total_w = sum(c.shape[1] for _, c in crops) + gap * (len(crops) - 1)
  canvas = Image.new("RGB", (total_w, h + label_h), "white")
  draw = ImageDraw.Draw(canvas)
  font = label_font()
  for i, line in enumerate(caption.split("\n") if caption else ()):
    draw.text((3, 1 + LABEL_LINE * i), line, fill="black", font=font)
  x = 0
  for label, c in crops:
    canvas.paste(Image.fromarray(c), (x, label_h))
    for i, line in enumerate(label.split("\n")):
      draw.text((x + 3, top_h + 1 + LABEL_LINE * i), line, fill="black", font=font)
    x += c.shape[1] + gap
  return np.asarray(canvas)


def wrote_lines(wrote) -> str:
  """`wrote PATH  (what)` lines for [(path, what), ...], paths absolute and aligned."""
  paths = [os.path.abspath(p) for p, _ in wrote]
  width = max(map(len, paths))
  return "\n".join(f"wrote {p:<{width}}  ({what})" for p, (_, what) in zip(paths, wrote))
