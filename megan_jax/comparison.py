"""Side-by-side crops of one output frame (eval's comparison.png, the validation image).

Panels, left to right: the LR input (nearest-neighbour x4: the pixels the model is given) | each
method | GT, each labelled with its PSNR-Y on the crop (`metrics.psnr_y`) and the frame. An input
frame has an LR frame; an interpolated one (odd offset in its window) has none, so its LR panel is
the input frame before it. The frame and the crop are where the model's squared error (on Y) falls
most below the baseline's, summed over the frame or the crop: where the model fixes the most
error, i.e. edges and texture a person can see. (The largest gain in dB would pick a flat dark patch
where both are already good and nothing can be seen.) The evaluation picks the frame from its
per-frame scores (`best_frame`, whole frames), then the `crop` x `crop` GT window within it
(`best_box`).
"""

import numpy as np

from megan_jax import metrics, report
from megan_jax.data.pipeline import SCALE, iter_eval_windows

_PEAK2 = 255.0 ** 2


def _mse(psnr: float) -> float:
  """The mean squared error (8-bit scale) of a PSNR in dB."""
  return _PEAK2 / 10.0 ** (psnr / 10.0)


def best_frame(results: dict, model: str, baseline: str) -> tuple[int, int, float] | None:
  """(clip position, frame index, PSNR-Y gain in dB) of the frame where `model`'s mean squared
  error on Y falls most below `baseline`'s, from `evaluate_sequences` results {method: res}; None
  when it falls nowhere."""
  best, most = None, 0.0
  for c, (ours, base) in enumerate(zip(results[model]["clips"], results[baseline]["clips"])):
    for f, g in zip(ours["frames"], base["frames"]):
      drop = _mse(g["psnr_y"]) - _mse(f["psnr_y"])
      if np.isfinite(drop) and drop > most:
        best, most = (c, f["index"], float(f["psnr_y"] - g["psnr_y"])), drop
  return best


def _starts(length: int, size: int, stride: int) -> np.ndarray:
  """Crop origins every `stride` pixels, plus the last one that fits."""
  return np.unique(np.append(np.arange(0, length - size + 1, stride), length - size))


def _box_sums(err: np.ndarray, size: tuple, tops: np.ndarray, lefts: np.ndarray) -> np.ndarray:
  """The sum of `err` (H, W) over each (top, left) crop of `size`: (tops, lefts)."""
  h, w = size
  c = np.pad(err.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # (H + 1, W + 1) integral image
  t, l = np.meshgrid(tops, lefts, indexing="ij")
  return c[t + h, l + w] - c[t, l + w] - c[t + h, l] + c[t, l]


def best_box(model: np.ndarray, baseline: np.ndarray, gt: np.ndarray, size: int,
             stride: int | None = None) -> tuple[tuple[int, int, int, int], float]:
  """The crop (top, left, h, w) of side at most `size` where `model`'s squared error on Y (uint8
  (H, W, 3) against `gt`) falls most below `baseline`'s, summed over the crop, on a grid of
  `stride` pixels; and the PSNR-Y gain in dB within that crop."""
  box, gain, _ = _best_box(model, baseline, gt, size, stride)
  return box, gain


def _best_box(model, baseline, gt, size: int, stride: int | None = None):
  """`best_box` and the drop of the squared error summed over the crop."""
  height, width = gt.shape[:2]
  h, w = min(size, height), min(size, width)
  stride = stride or max(1, size // 8)
  tops, lefts = _starts(height, h, stride), _starts(width, w, stride)
  y = metrics.rgb_to_y(gt)
  err_model = (metrics.rgb_to_y(model) - y) ** 2
  err_base = (metrics.rgb_to_y(baseline) - y) ** 2
  drop = _box_sums(err_base - err_model, (h, w), tops, lefts)
  i, j = np.unravel_index(np.argmax(drop), drop.shape)
  top, left = int(tops[i]), int(lefts[j])
  psnr = lambda err: 10.0 * np.log10(_PEAK2 / max(err[top:top + h, left:left + w].mean(), 1e-10))
  return (top, left, h, w), float(psnr(err_model) - psnr(err_base)), float(drop[i, j])


def _window(sequence, index: int | None, num_input_frames: int) -> dict:
  """The window in which frame `index` is scored (the first window for None)."""
  for win in iter_eval_windows(sequence, num_input_frames=num_input_frames):
    if index is None or any(i == index and s for i, s in zip(win["gt_indices"], win["scored"])):
      return win
  raise ValueError(f"{sequence.name}: frame {index} is in no evaluation window")


def _psnr(img: np.ndarray, gt: np.ndarray, box) -> str:
  top, left, h, w = box
  crop = lambda x: x[top:top + h, left:left + w]
  return f"PSNR-Y {metrics.psnr_y(crop(img), crop(gt)):.2f} dB"


def crops(sequence, predict_fns: dict, *, model: str, baseline: str, index: int | None = None,
          frame_gain: float | None = None, num_input_frames: int = 4, crop: int = 128,
          zoom: int = 2) -> tuple[np.ndarray, str]:
  """Side-by-side crops of frame `index` of `sequence` (picked by `best_frame`, whose gain is
  `frame_gain`; None: the frame of the first window with the best crop), at the crop where
  `predict_fns[model]`'s squared error falls most below `predict_fns[baseline]`'s. Panels:
  LR | `predict_fns` in their order | GT.

  Returns (uint8 (report.LABEL_LINE * 4 + zoom h, W, 3), the caption (the image's two top lines,
  as one line): which frame and crop).
  """
  win = _window(sequence, index, num_input_frames)
  outputs = {name: metrics.to_uint8(np.asarray(fn(win["lr"][None]))[0])  # (2n+1, H, W, 3)
             for name, fn in predict_fns.items()}
  offsets = [k for k, i in enumerate(win["gt_indices"]) if index is None or i == index]
  (box, gain, _), k = max(((_best_box(outputs[model][k], outputs[baseline][k], win["gt"][k], crop),
                            k) for k in offsets), key=lambda pair: pair[0][2])
  first = getattr(sequence, "first", 0)  # a part of a clip (`FrameRange`): number as in the clip
  frame, gt = first + win["gt_indices"][k], win["gt"][k]
  interpolated = k % 2 == 1
  lr_index = frame - 1 if interpolated else frame
  lr = np.repeat(np.repeat(metrics.to_uint8(win["lr"][k // 2]), SCALE, 0), SCALE, 1)  # (H, W, 3)
  lr_label = (f"LR frame {lr_index} (no LR of {frame})" if interpolated
              else f"LR frame {lr_index} (input)")
  panels = [(f"{lr_label}, nearest x{SCALE}\n{_psnr(lr, gt, box)}", lr)]
  for name, out in outputs.items():
    extra = f" ({gain:+.2f} dB)" if name == model else ""  # over the baseline
    panels.append((f"{name}\n{_psnr(out[k], gt, box)}{extra}", out[k]))
  kind = "interpolated" if interpolated else "input"
  panels.append((f"GT frame {frame}\n{kind} frame", gt))
  top, left, h, w = box
  picked = (f"the frame where {model}'s squared error falls most below {baseline}'s "
            f"({frame_gain:+.2f} dB PSNR-Y)" if frame_gain is not None
            else "in the first window")
  caption = (f"{sequence.name} frame {frame} ({kind}), {picked};\nin it the {w}x{h} crop at "
             f"x={left}, y={top}, where it falls most ({gain:+.2f} dB on the crop)")
  return (report.side_by_side_image(panels, box=box, zoom=zoom, caption=caption),
          caption.replace("\n", " "))
