"""STVSR evaluation metrics: PSNR and SSIM on the BT.601 Y channel, PSNR on RGB.

The protocol of Zooming Slow-Mo / MEGAN (and EDVR's `calculate_psnr` / `calculate_ssim`):
the prediction is rounded to uint8, Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 is
computed in float64 on 0..255 values, PSNR uses the whole frame, and SSIM (Wang et al. 2004,
Eq. (13)) uses an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, averaged
over the valid region (no padding). Scores are averaged over a clip's frames, then over clips.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np

_PEAK = 255.0
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)  # R, G, B


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """Normalised 1-D Gaussian taps (cv2.getGaussianKernel); the 2-D window is their outer product."""
  d = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(d * d) / (2.0 * sigma * sigma))
  return g / g.sum()


_WINDOW = _gaussian_window()


def to_uint8(img: np.ndarray) -> np.ndarray:
  """float in [0, 1] -> round(clip(img * 255)) as uint8; uint8 passes through unchanged."""
  img = np.asarray(img)
  if img.dtype == np.uint8:
    return img
  if not np.issubdtype(img.dtype, np.floating):
    raise ValueError(f"metrics.to_uint8: expected uint8 or float in [0, 1], got dtype {img.dtype}")
  return np.rint(np.clip(img.astype(np.float64) * _PEAK, 0.0, _PEAK)).astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
  """BT.601 luma of an (..., 3) RGB image (uint8 or float on 0..255) as float64 in [16, 235]."""
  img = np.asarray(img)
  if img.shape[-1:] != (3,):
    raise ValueError(f"metrics.rgb_to_y: expected (..., 3) RGB, got shape {img.shape}")
  return img.astype(np.float64) @ _Y_WEIGHTS / _PEAK + 16.0


def _pair(pred: np.ndarray, gt: np.ndarray, fn: str) -> tuple[np.ndarray, np.ndarray]:
  """Rounds both images to uint8 and checks that they are matching (H, W, 3) frames."""
  pred, gt = to_uint8(pred), to_uint8(gt)
  if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
    raise ValueError(
        f"metrics.{fn}: pred and gt must both be (H, W, 3); got {pred.shape} and {gt.shape}")
  return pred, gt


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  if mse == 0:
    return math.inf
  return float(10.0 * np.log10(_PEAK * _PEAK / mse))


def psnr_y(pred: np.ndarray, gt: np.ndarray) -> float:
  """PSNR (dB) of the Y channels over the whole frame; inf for identical frames."""
  pred, gt = _pair(pred, gt, "psnr_y")
  return _psnr(rgb_to_y(pred), rgb_to_y(gt))


def psnr_rgb(pred: np.ndarray, gt: np.ndarray) -> float:
  """PSNR (dB) over all RGB values of the frame; inf for identical frames."""
  pred, gt = _pair(pred, gt, "psnr_rgb")
  return _psnr(pred, gt)


def _filter_valid(x: np.ndarray) -> np.ndarray:
  """Valid-region correlation of an (H, W) array with the separable 11x11 Gaussian window."""
  k = len(_WINDOW)
  h, w = x.shape
  rows = sum(g * x[i:h - k + 1 + i] for i, g in enumerate(_WINDOW))  # (H - 10, W)
  return sum(g * rows[:, j:w - k + 1 + j] for j, g in enumerate(_WINDOW))  # (H - 10, W - 10)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
  """Mean SSIM (Wang et al. 2004, Eq. (13)) of two (H, W) images on 0..255, valid region only."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  k = len(_WINDOW)
  if a.shape != b.shape or a.ndim != 2 or min(a.shape) < k:
    raise ValueError(
        f"metrics.ssim: need two equal (H, W) images of at least {k}x{k}; got {a.shape}, {b.shape}")
  c1, c2 = (0.01 * _PEAK) ** 2, (0.03 * _PEAK) ** 2
  mu_a, mu_b = _filter_valid(a), _filter_valid(b)
  var_a = _filter_valid(a * a) - mu_a * mu_a
  var_b = _filter_valid(b * b) - mu_b * mu_b
  cov = _filter_valid(a * b) - mu_a * mu_b
  num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
  den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
  return float(np.mean(num / den))


def ssim_y(pred: np.ndarray, gt: np.ndarray) -> float:
  """SSIM of the Y channels (prediction rounded to uint8 first)."""
  pred, gt = _pair(pred, gt, "ssim_y")
  return ssim(rgb_to_y(pred), rgb_to_y(gt))


def mean_over_clips(per_clip: Mapping[str, Sequence[float]]) -> float:
  """Mean over each clip's scored frames, then mean over clips (so long clips do not dominate)."""
  if not per_clip:
    raise ValueError("metrics.mean_over_clips: no clips given")
  empty = [name for name, scores in per_clip.items() if len(scores) == 0]
  if empty:
    raise ValueError(f"metrics.mean_over_clips: clips without scored frames: {empty}")
  return float(np.mean([np.mean(np.asarray(s, np.float64)) for s in per_clip.values()]))
