"""Y-channel PSNR / SSIM against the fixture, hand-computed values and a direct-window loop."""

import math
import pathlib
import warnings

import numpy as np
import pytest

from megan_jax import metrics

FIXTURE = np.load(pathlib.Path(__file__).parent / "fixtures" / "stvsr_reference.npz")


@pytest.mark.parametrize("name", ["psnr_y", "ssim_y", "psnr_rgb"])
def test_matches_fixture(name):
  got = getattr(metrics, name)(FIXTURE["metric_pred"], FIXTURE["metric_gt"])
  assert abs(got - float(FIXTURE[name])) <= 1e-6


def test_float_prediction_is_rounded_to_uint8_first():
  pred, gt = FIXTURE["metric_pred"], FIXTURE["metric_gt"]
  # Offsets well inside +-0.5 / 255 must round back to the same uint8 frame.
  jitter = np.random.default_rng(0).uniform(-0.4, 0.4, pred.shape)
  pred_float = (pred + jitter) / 255.0
  for name in ("psnr_y", "ssim_y", "psnr_rgb"):
    assert getattr(metrics, name)(pred_float, gt) == getattr(metrics, name)(pred, gt)


def test_to_uint8_rounds_and_clips():
  x = np.array([-0.2, 0.0, 0.4 / 255, 0.6 / 255, 100.2 / 255, 1.0, 1.7])
  np.testing.assert_array_equal(metrics.to_uint8(x), [0, 0, 0, 1, 100, 255, 255])
  u = np.array([3, 250], np.uint8)
  assert metrics.to_uint8(u) is u


def test_rgb_to_y_hand_values():
  rgb = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
  want = [16.0, 235.0, 16.0 + 65.481, 16.0 + 128.553, 16.0 + 24.966]
  np.testing.assert_allclose(metrics.rgb_to_y(rgb), want, rtol=0, atol=1e-12)


def test_psnr_against_hand_computed_mse():
  gt = np.full((4, 4, 3), 100, np.uint8)
  pred = gt.copy()
  pred[1, 2, 0] = 110  # one of 48 values off by 10: MSE = 100 / 48
  assert metrics.psnr_rgb(pred, gt) == pytest.approx(10 * math.log10(255**2 * 48 / 100), abs=1e-12)
  # +10 on every channel moves Y by 10 * 219 / 255 everywhere.
  want = 20 * math.log10(255 / (2190 / 255))
  assert metrics.psnr_y(gt + 10, gt) == pytest.approx(want, abs=1e-12)


def test_identical_frames_give_inf_psnr_and_unit_ssim_without_warnings():
  gt = FIXTURE["metric_gt"][:32, :40]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert metrics.psnr_y(gt, gt) == math.inf
    assert metrics.psnr_rgb(gt, gt) == math.inf
    assert metrics.ssim_y(gt, gt) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_direct_window_loop():
  rng = np.random.default_rng(1)
  a = rng.uniform(0, 255, (14, 17))
  b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
  d = np.arange(11) - 5.0
  g = np.exp(-d**2 / (2 * 1.5**2))
  win = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  vals = []
  for i in range(a.shape[0] - 10):
    for j in range(a.shape[1] - 10):
      pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
      ma, mb = (win * pa).sum(), (win * pb).sum()
      va = (win * (pa - ma) ** 2).sum()
      vb = (win * (pb - mb) ** 2).sum()
      cov = (win * (pa - ma) * (pb - mb)).sum()
      vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
  assert metrics.ssim(a, b) == pytest.approx(np.mean(vals), abs=1e-10)


def test_mean_over_clips_averages_frames_then_clips():
  assert metrics.mean_over_clips({"a": [1.0, 2.0, 3.0], "b": [10.0]}) == pytest.approx(6.0)
  with pytest.raises(ValueError, match="mean_over_clips"):
    metrics.mean_over_clips({"a": [1.0], "b": []})
  with pytest.raises(ValueError, match="mean_over_clips"):
    metrics.mean_over_clips({})


def test_mismatched_shapes_raise_clear_error():
  with pytest.raises(ValueError, match="psnr_y"):
    metrics.psnr_y(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))
  with pytest.raises(ValueError, match="ssim"):
    metrics.ssim_y(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
