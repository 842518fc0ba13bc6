"""The evaluation's pictures: the PSNR-Y per frame plot and the crops where the model gains most,
checked against hand-computed PSNR, brute-force searches and the pixels they must show."""

import math
import os

import numpy as np
import pytest
from PIL import Image

from megan_jax import comparison, metrics, plots, report
from megan_jax.data.imresize import imresize_np
from megan_jax.data.sources import ArraySequence
from megan_jax.evaluate import evaluate_sequences

Y_SPAN = (65.481 + 128.553 + 24.966) / 255  # Y change per unit of equal R, G, B (BT.601)


def _constant_fn(level_of_offset):
  """A predict fn whose frame at window offset k is flat at 100 + level_of_offset(k)."""
  def fn(lr):
    b, _, h, w, _ = lr.shape  # (B, 4, h, w, 3)
    out = np.empty((b, 7, 4 * h, 4 * w, 3), np.float32)
    for k in range(7):
      out[:, k] = (100 + level_of_offset(k)) / 255
    return out
  return fn


def test_psnr_per_frame_plot_shows_the_scores_of_the_json(tmp_path):
  """10 flat frames at level 100: windows start at 0 and, for the tail, at 3, so frames 7, 8, 9 are
  offsets 4, 5, 6 there (8 is interpolated though even). The model is off by offset + 1 levels,
  the baseline by 2: PSNR-Y = 20 log10(255 / (d * 219 / 255))."""
  seq = ArraySequence("flat", np.full((10, 16, 16, 3), 100, np.uint8))
  results = {"model": evaluate_sequences(_constant_fn(lambda k: k + 1), [seq], progress=False),
             "base": evaluate_sequences(_constant_fn(lambda k: 2), [seq], progress=False)}
  offsets = list(range(7)) + [4, 5, 6]
  psnr = lambda d: 20 * math.log10(255 / (d * Y_SPAN))
  path = str(tmp_path / "set" / "psnr_y_per_frame.png")
  (drawn,) = plots.plot_psnr_per_frame(path, results, title="flat", model="model", baseline="base")
  assert drawn["name"] == "flat" and drawn["index"] == list(range(10))
  assert drawn["interpolated"] == [k % 2 == 1 for k in offsets]
  np.testing.assert_allclose(drawn["psnr_y"]["model"], [psnr(k + 1) for k in offsets], rtol=1e-9)
  np.testing.assert_allclose(drawn["psnr_y"]["base"], [psnr(2)] * 10, rtol=1e-9)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > 300


def test_a_large_set_plots_the_clips_where_the_model_gains_least():
  clip = lambda name, gain: {"name": name, "frames": [
      {"index": 0, "psnr_y": 30.0 + gain, "interpolated": False}]}
  gains = [0.5 * ((7 * i) % 15) for i in range(15)]  # a permutation of 0, 0.5, ..., 7
  results = {"m": {"clips": [clip(f"c{i}", g) for i, g in enumerate(gains)]},
             "b": {"clips": [clip(f"c{i}", 0.0) for i in range(15)]}}
  shown, note = plots.clips_to_plot(plots.per_frame_series(results), "m", "b")
  want = sorted(range(15), key=lambda i: gains[i])[:plots.MAX_CLIPS]
  assert [d["name"] for d in shown] == [f"c{i}" for i in want]
  assert note == f"{plots.MAX_CLIPS} of 15 clips: those where m gains least over b"


def test_best_box_is_the_brute_force_maximum_of_the_squared_error_drop():
  rng = np.random.default_rng(0)
  gt, model, base = (rng.integers(0, 256, (20, 26, 3), dtype=np.uint8) for _ in range(3))
  box, gain = comparison.best_box(model, base, gt, 8, stride=1)
  crop = lambda img, t, l: img[t:t + 8, l:l + 8]
  sse = lambda img, t, l: float(np.sum((metrics.rgb_to_y(crop(img, t, l))
                                        - metrics.rgb_to_y(crop(gt, t, l))) ** 2))
  brute = max((sse(base, t, l) - sse(model, t, l), (t, l)) for t in range(13) for l in range(19))
  assert box == (*brute[1], 8, 8)
  t, l = brute[1]
  np.testing.assert_allclose(gain, metrics.psnr_y(crop(model, t, l), crop(gt, t, l))
                             - metrics.psnr_y(crop(base, t, l), crop(gt, t, l)), rtol=1e-9)


def test_best_box_prefers_detail_fixed_to_a_larger_db_gain_on_a_flat_patch():
  """Issue 26: a flat patch where both are nearly right (MSE 0.1 -> 0.01: +10 dB) against an edge
  whose error the model cuts from 400 to 100 (+6 dB): the edge is what a person can see."""
  gt = np.full((8, 16, 3), 128, np.uint8)  # grey: Y errors are the RGB errors times one factor
  base, model = gt.astype(np.float64), gt.astype(np.float64)
  base[:, :8] += np.sqrt(0.1)   # left half: squared error 0.1 -> 0.01
  model[:, :8] += np.sqrt(0.01)
  base[:, 8:] += 20.0           # right half: 400 -> 100
  model[:, 8:] += 10.0
  box, gain = comparison.best_box(model, base, gt, 8, stride=8)
  assert box == (0, 8, 8, 8)
  np.testing.assert_allclose(gain, 10 * np.log10(400 / 100), rtol=1e-6)


def test_best_frame_picks_the_largest_drop_of_the_squared_error():
  res = lambda *clips: {"clips": [{"frames": [{"index": i, "psnr_y": v} for i, v in enumerate(c)]}
                                  for c in clips]}
  # MSE = 255^2 / 10^(PSNR / 10): frame (0, 1) 10 -> 1 (+10 dB), frame (1, 0) 1000 -> 100 (+10 dB),
  # frame (1, 1) 1000 -> 500 (+3 dB): the largest drop is (1, 0), then (1, 1).
  psnr = lambda mse: 10 * math.log10(255.0 ** 2 / mse)
  model = res([psnr(100), psnr(1)], [psnr(100), psnr(500)])
  base = res([psnr(100), psnr(10)], [psnr(1000), psnr(1000)])
  assert comparison.best_frame({"m": model, "b": base}, "m", "b") == (1, 0, pytest.approx(10.0))
  assert comparison.best_frame({"m": base, "b": model}, "m", "b") is None  # worse everywhere


def test_crops_show_the_frame_and_place_of_the_largest_gain():
  """7 frames: the baseline is the GT plus noise everywhere, the model too except an 8x8 patch
  of frame 3 (interpolated) at (top 12, left 20), which it gets exactly right."""
  rng = np.random.default_rng(1)
  gt = rng.integers(40, 216, (7, 32, 48, 3), dtype=np.uint8)
  noisy = lambda: np.clip(gt + rng.integers(-30, 31, gt.shape), 0, 255).astype(np.uint8)
  base, model = noisy(), noisy()
  model[3, 12:20, 20:28] = gt[3, 12:20, 20:28]
  fns = {name: (lambda out: lambda lr: (out[None] / 255).astype(np.float32))(out)
         for name, out in (("Bicubic", base), ("Model", model))}
  image, caption = comparison.crops(ArraySequence("clip", gt), fns, model="Model",
                                    baseline="Bicubic", index=3, frame_gain=1.5, crop=8, zoom=2)
  assert caption.startswith("clip frame 3 (interpolated), the frame where Model's squared error "
                            "falls most below Bicubic's (+1.50 dB PSNR-Y); in it the 8x8 crop at "
                            "x=20, y=12")
  top = 4 * report.LABEL_LINE  # caption (2 lines), name, PSNR
  assert image.shape == (top + 16, 4 * 16 + 3 * 4, 3)  # LR | Bicubic | Model | GT, gaps of 4
  zoomed = lambda img: np.repeat(np.repeat(img[12:20, 20:28], 2, 0), 2, 1)
  np.testing.assert_array_equal(image[top:, 2 * 20:2 * 20 + 16], zoomed(model[3]))
  np.testing.assert_array_equal(image[top:, 3 * 20:], zoomed(gt[3]))
  lr = np.clip(np.floor(imresize_np(gt[2], 1 / 4) + 0.5), 0, 255).astype(np.uint8)  # MATLAB uint8
  nearest = np.repeat(np.repeat(lr, 4, 0), 4, 1)  # the input frame before 3, nearest x4
  np.testing.assert_array_equal(image[top:, :16], zoomed(nearest))


def test_labels_are_drawn_in_dejavu_sans():
  """The label area is exactly what PIL draws with matplotlib's DejaVuSans.ttf at 12 px (the
  built-in bitmap font ran words together: 'mostover')."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  from PIL import ImageDraw, ImageFont  # pylint: disable=import-outside-toplevel
  panel = np.zeros((8, 160, 3), np.uint8)
  image = report.side_by_side_image([("most over the crop at", panel)])
  font = ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf",
                                         "DejaVuSans.ttf"), 12)
  want = Image.new("RGB", (160, report.LABEL_LINE), "white")
  ImageDraw.Draw(want).text((3, 1), "most over the crop at", fill="black", font=font)
  np.testing.assert_array_equal(image[:report.LABEL_LINE], np.asarray(want))
