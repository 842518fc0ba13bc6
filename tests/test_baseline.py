"""Bicubic + frame-blending baseline: frame layout against per-frame imresize."""

import jax
import numpy as np
import pytest

from megan_jax.baseline import bicubic_blend_jnp, bicubic_blend_np
from megan_jax.data.imresize import imresize_np


def _lr(shape, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, shape)


def test_numpy_baseline_frames():
  lr = _lr((4, 5, 7, 3))  # (T_in, h, w, 3)
  out = bicubic_blend_np(lr)
  assert out.shape == (7, 20, 28, 3)
  ups = [imresize_np(frame, 4) for frame in lr]
  for k, up in enumerate(ups):
    np.testing.assert_allclose(out[2 * k], up, rtol=0, atol=1e-12)
  for k in range(3):
    np.testing.assert_allclose(out[2 * k + 1], (ups[k] + ups[k + 1]) / 2, rtol=0, atol=1e-12)


def test_constant_clip_stays_constant():
  out = bicubic_blend_np(np.full((2, 3, 3, 3), 0.25))
  assert out.shape == (3, 12, 12, 3)
  np.testing.assert_allclose(out, 0.25, rtol=0, atol=1e-12)


def test_jnp_baseline_matches_numpy_under_jit():
  lr = _lr((2, 3, 6, 5, 3), seed=1)  # (B, T_in, h, w, 3)
  got = np.asarray(jax.jit(bicubic_blend_jnp)(lr.astype(np.float32)))
  assert got.shape == (2, 5, 24, 20, 3) and got.dtype == np.float32
  for b in range(2):
    np.testing.assert_allclose(got[b], bicubic_blend_np(lr[b]), rtol=0, atol=1e-5)


def test_bad_shapes_raise_clear_error():
  with pytest.raises(ValueError, match="bicubic_blend_np"):
    bicubic_blend_np(np.zeros((5, 7, 3)))
  with pytest.raises(ValueError, match="bicubic_blend_jnp"):
    bicubic_blend_jnp(np.zeros((3, 5, 7, 3)))
