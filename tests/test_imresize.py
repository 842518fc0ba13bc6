"""MATLAB-compatible bicubic imresize vs the fixture, hand-derived weights and a loop reference."""

import math
import pathlib

import jax
import numpy as np
import pytest

from megan_jax.data.imresize import imresize_jnp, imresize_np, resize_matrix

FIXTURE = np.load(pathlib.Path(__file__).parent / "fixtures" / "stvsr_reference.npz")

# (input key, scale, expected key, input transform)
CASES = {
    "down_x4": ("hr", 0.25, lambda x: x),
    "down_x4_odd": ("hr_odd", 0.25, lambda x: x),
    "up_x4_of_rounded_down": ("down_x4", 4, np.round),
}
F32_ATOL = 1e-4  # float32 on 0..255 values: about 2 ulp of 255 per matmul


def _case(name):
  src, scale, prep = CASES[name]
  return prep(FIXTURE[src]), scale, FIXTURE[name]


def _keys_cubic(s):
  """Keys' cubic, a = -0.5, written out piecewise."""
  s = abs(s)
  if s <= 1:
    return 1.5 * s**3 - 2.5 * s**2 + 1
  if s <= 2:
    return -0.5 * s**3 + 2.5 * s**2 - 4 * s + 2
  return 0.0


def _loop_resize_1d(signal, scale):
  """MATLAB's algorithm, one output sample at a time, with explicit symmetric mirroring."""
  n = len(signal)
  out = []
  for i in range(1, math.ceil(n * scale) + 1):
    u = i / scale + 0.5 * (1 - 1 / scale)
    stretch = min(scale, 1.0)
    lo, hi = math.floor(u - 2 / stretch) - 1, math.ceil(u + 2 / stretch) + 1
    taps = [(j, stretch * _keys_cubic(stretch * (u - j))) for j in range(lo, hi + 1)]
    total = sum(wt for _, wt in taps)
    acc = 0.0
    for j, wt in taps:
      k = j - 1  # 0-based, then mirror: -1 -> 0, n -> n - 1
      while k < 0 or k >= n:
        k = -k - 1 if k < 0 else 2 * n - 1 - k
      acc += wt / total * signal[k]
    out.append(acc)
  return np.array(out)


@pytest.mark.parametrize("name", list(CASES))
def test_numpy_matches_fixture(name):
  img, scale, want = _case(name)
  got = imresize_np(img, scale)
  assert got.dtype == np.float64 and got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  assert np.abs(np.round(got) - np.round(want)).max() <= 1


@pytest.mark.parametrize("name", list(CASES))
def test_jnp_float32_matches_fixture_under_jit(name):
  img, scale, want = _case(name)
  got = np.asarray(jax.jit(imresize_jnp, static_argnums=1)(img.astype(np.float32), scale))
  assert got.dtype == np.float32 and got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=F32_ATOL)
  assert np.abs(np.round(got) - np.round(want)).max() <= 1


def test_jnp_float64_with_x64_matches_fixture():
  if not hasattr(jax, "enable_x64"):
    pytest.skip("this JAX has no jax.enable_x64 context manager")
  img, scale, want = _case("down_x4_odd")
  with jax.enable_x64(True):
    got = np.asarray(imresize_jnp(img.astype(np.float64), scale))
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_hand_derived_weights_for_2x_downscale():
  # Interior output 4 (1-based) of a 2x shrink sits at u = 4 / 0.5 - 0.5 = 7.5; the stretched kernel
  # 0.5 * cubic(0.5 * d) at d = +-0.5, +-1.5, +-2.5, +-3.5 is 0.5 * cubic(0.25, 0.75, 1.25, 1.75)
  # = 0.5 * (0.8671875, 0.2265625, -0.0703125, -0.0234375), which already sums to 1.
  half = np.array([-0.01171875, -0.03515625, 0.11328125, 0.43359375])
  want = np.zeros(16)
  want[3:11] = np.concatenate([half, half[::-1]])  # input pixels 4..11 (1-based)
  np.testing.assert_allclose(resize_matrix(16, 0.5)[3], want, rtol=0, atol=1e-15)


# Integer 1 / scale makes the stretched kernel a partition of unity; 0.75 and 0.3 need normalising.
@pytest.mark.parametrize(
    "n, scale", [(16, 0.5), (13, 0.25), (9, 1 / 3), (10, 0.75), (11, 0.3), (5, 4), (7, 2), (1, 4)])
def test_one_dimensional_resize_matches_loop(n, scale):
  signal = np.random.default_rng(n).uniform(0, 255, n)
  want = _loop_resize_1d(signal, scale)
  rows = imresize_np(signal[:, None, None], scale)[:, 0, 0]  # along H
  cols = imresize_np(signal[None, :], scale)[0]  # along W of a 2-D image
  np.testing.assert_allclose(rows, want, rtol=0, atol=1e-9)
  np.testing.assert_allclose(cols, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("h, w, scale", [(130, 250, 0.25), (7, 5, 0.5), (5, 3, 4), (9, 11, 1 / 3)])
def test_output_size_is_ceil_of_scaled_size(h, w, scale):
  img = np.zeros((2, h, w, 3))
  want = (2, math.ceil(h * scale), math.ceil(w * scale), 3)
  assert imresize_np(img, scale).shape == want
  assert imresize_jnp(img, scale).shape == want


@pytest.mark.parametrize("scale", [0.25, 4])
def test_constant_image_stays_constant(scale):
  img = np.full((2, 13, 10, 3), 77.0)
  np.testing.assert_allclose(imresize_np(img, scale), 77.0, rtol=0, atol=1e-12)
  np.testing.assert_allclose(np.asarray(imresize_jnp(img, scale)), 77.0, rtol=0, atol=F32_ATOL)


def test_uint8_grayscale_and_leading_axes():
  img = FIXTURE["hr_odd"][:40, :60]  # uint8 (40, 60, 3)
  ref = imresize_np(img.astype(np.float64), 0.25)
  np.testing.assert_array_equal(imresize_np(img, 0.25), ref)
  np.testing.assert_allclose(imresize_np(img[..., 1], 0.25), ref[..., 1], rtol=0, atol=1e-12)
  gray_jnp = np.asarray(imresize_jnp(img[..., 1], 0.25))
  np.testing.assert_allclose(gray_jnp, ref[..., 1], rtol=0, atol=F32_ATOL)
  stack = np.stack([img, img[::-1]])[None]  # (1, 2, 40, 60, 3)
  got = imresize_np(stack, 0.25)
  np.testing.assert_allclose(got[0, 0], ref, rtol=0, atol=1e-12)
  np.testing.assert_allclose(got[0, 1], imresize_np(img[::-1], 0.25), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape, scale", [((5,), 0.5), ((4, 4, 3), 0), ((4, 4, 3), -1.0)])
def test_bad_input_raises_clear_error(shape, scale):
  with pytest.raises(ValueError, match="imresize"):
    imresize_np(np.zeros(shape), scale)
  with pytest.raises(ValueError, match="imresize"):
    imresize_jnp(np.zeros(shape), scale)
