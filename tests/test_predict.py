"""predict: padding to a multiple of 4 and cropping back, tiling, the compile cache, dtype, signals."""

import os
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megan_jax.predict import make_predict_fn, tile_plan
from megan_jax.stop_signals import SIGNALS as STOP_SIGNALS, Interrupted, stop_on_signals


class BoxUpsampler(nn.Module):
  """Stand-in with a small receptive field: a (2r+1)^2 box filter (zero padded) times 2 * gain,
  nearest x4 upsampling, and frame blending in time. Like MEGAN it rejects h, w not multiple of 4."""
  radius: int = 1

  @nn.compact
  def __call__(self, x, *, train=False):
    b, t, h, w, c = x.shape  # (B, n+1, h, w, 3)
    if h % 4 or w % 4:
      raise ValueError(f"frame size {h}x{w} is not a multiple of 4")
    gain = self.param("gain", nn.initializers.constant(0.5), ())
    r = self.radius
    xp = jnp.pad(x, ((0, 0), (0, 0), (r, r), (r, r), (0, 0)))
    box = sum(xp[:, :, i:i + h, j:j + w] for i in range(2 * r + 1) for j in range(2 * r + 1))
    y = 2 * gain * box / (2 * r + 1) ** 2
    y = jnp.repeat(jnp.repeat(y, 4, axis=2), 4, axis=3)  # (B, n+1, 4h, 4w, 3)
    mid = (y[:, :-1] + y[:, 1:]) / 2
    out = jnp.stack([y[:, :-1], mid], axis=2).reshape(b, 2 * (t - 1), 4 * h, 4 * w, c)
    return jnp.concatenate([out, y[:, -1:]], axis=1)


def reference(lr, radius, gain):
  """Numpy loops: reflect-pad to a multiple of 4, box filter, nearest x4, blend, crop."""
  b, t, h, w, c = lr.shape
  x = np.pad(lr, ((0, 0), (0, 0), (0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")
  hp, wp = x.shape[2:4]
  box = np.zeros_like(x, dtype=np.float64)
  for yy in range(hp):
    for xx in range(wp):
      ys = slice(max(yy - radius, 0), yy + radius + 1)
      xs = slice(max(xx - radius, 0), xx + radius + 1)
      box[:, :, yy, xx] = x[:, :, ys, xs].sum(axis=(2, 3))
  box *= 2 * gain / (2 * radius + 1) ** 2
  out = np.zeros((b, 2 * t - 1, 4 * hp, 4 * wp, c))
  for k in range(2 * t - 1):
    frame = box[:, k // 2] if k % 2 == 0 else (box[:, k // 2] + box[:, k // 2 + 1]) / 2
    for yy in range(4 * hp):
      for xx in range(4 * wp):
        out[:, k, yy, xx] = frame[:, yy // 4, xx // 4]
  return out[:, :, :4 * h, :4 * w]


def _lr(shape, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


@pytest.mark.parametrize("h, w", [(8, 12), (9, 13), (10, 7), (11, 6)])
def test_pads_and_crops_any_size(h, w):
  model = BoxUpsampler(radius=1)
  params = {"gain": jnp.float32(0.25)}
  lr = _lr((2, 4, h, w, 3))
  out = make_predict_fn(model, params)(lr)
  assert out.shape == (2, 7, 4 * h, 4 * w, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, reference(lr, 1, 0.25), rtol=0, atol=1e-6)


def test_accepts_a_variables_dict():
  model = BoxUpsampler(radius=1)
  lr = _lr((1, 2, 4, 4, 3))
  out = make_predict_fn(model, {"params": {"gain": jnp.float32(1.0)}})(lr)
  np.testing.assert_allclose(out, reference(lr, 1, 1.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("length, tile, overlap", [(40, 16, 8), (52, 16, 4), (12, 16, 8),
                                                   (36, 12, 8), (100, 32, 16)])
def test_tile_plan_partitions_the_axis(length, tile, overlap):
  plan = tile_plan(length, min(tile, length), overlap)
  kept = [p for start, lo, hi in plan for p in range(lo, hi)]
  assert kept == list(range(length))
  for start, lo, hi in plan:
    assert start % 4 == 0 and 0 <= start and start + min(tile, length) <= length
    # Kept pixels are at least overlap / 2 away from every tile edge inside the frame.
    if start > 0:
      assert lo - start >= overlap // 2
    if start + tile < length:
      assert start + tile - hi >= overlap // 2


@pytest.mark.parametrize("h, w, tile, overlap", [(37, 50, 16, 8), (21, 30, 12, 8), (16, 64, 16, 4)])
def test_tiled_equals_untiled(h, w, tile, overlap):
  model = BoxUpsampler(radius=2)  # receptive field 2 <= overlap / 2
  params = {"gain": jnp.float32(0.5)}
  lr = _lr((1, 4, h, w, 3), seed=1)
  whole = make_predict_fn(model, params)(lr)
  tiled = make_predict_fn(model, params, tile=tile, tile_overlap=overlap)(lr)
  assert tiled.shape == whole.shape == (1, 7, 4 * h, 4 * w, 3)
  np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_tiles_without_overlap_show_seams():
  """The control for the test above: without overlap the tile borders do change the result."""
  model = BoxUpsampler(radius=2)
  lr = _lr((1, 4, 32, 32, 3), seed=2)
  params = {"gain": jnp.float32(0.5)}
  whole = make_predict_fn(model, params)(lr)
  tiled = make_predict_fn(model, params, tile=16, tile_overlap=0)(lr)
  assert np.abs(tiled - whole).max() > 1e-2


def test_compiles_once_per_shape_and_shares_across_params():
  model = BoxUpsampler(radius=3)  # a model no other test uses: a fresh compile cache entry
  fn = make_predict_fn(model, {"gain": jnp.float32(0.5)})
  before = fn.num_traces
  fn(_lr((1, 4, 8, 8, 3)))
  fn(_lr((1, 4, 8, 8, 3), seed=1))
  assert fn.num_traces == before + 1
  fn(_lr((1, 4, 9, 8, 3)))
  assert fn.num_traces == before + 2
  # New parameters for an equal model reuse the compilation (e.g. periodic validation).
  fn2 = make_predict_fn(BoxUpsampler(radius=3), {"gain": jnp.float32(1.0)})
  lr = _lr((1, 4, 8, 8, 3), seed=3)
  out = fn2(lr)
  assert fn2.num_traces == before + 2
  np.testing.assert_allclose(out, reference(lr, 3, 1.0), rtol=0, atol=1e-6)


def test_bfloat16_params():
  model = BoxUpsampler(radius=1)
  lr = _lr((1, 2, 8, 8, 3))
  out = make_predict_fn(model, {"gain": jnp.float32(0.5)}, dtype="bfloat16")(lr)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, reference(lr, 1, 0.5), rtol=0, atol=2e-2)


def test_bad_arguments_raise_clear_errors():
  model = BoxUpsampler()
  params = {"gain": jnp.float32(0.5)}
  with pytest.raises(ValueError, match="tile must be a positive multiple of 4"):
    make_predict_fn(model, params, tile=10)
  with pytest.raises(ValueError, match="tile_overlap"):
    make_predict_fn(model, params, tile=16, tile_overlap=16)
  with pytest.raises(ValueError, match=r"\(B, n\+1, h, w, 3\)"):
    make_predict_fn(model, params)(np.zeros((4, 8, 8, 3), np.float32))


def test_runs_jax_arrays_on_device():
  model = BoxUpsampler(radius=1)
  lr = jax.device_put(_lr((1, 2, 5, 6, 3)))
  out = make_predict_fn(model, {"gain": jnp.float32(0.5)})(lr)
  np.testing.assert_allclose(out, reference(np.asarray(lr), 1, 0.5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stop_on_signals_raises_once_and_restores_the_handlers(signum):
  before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
  with pytest.raises(Interrupted, match=f"stopped by {signal.Signals(signum).name}.* during "
                                        f"the test; do this") as e:
    with stop_on_signals("the test", "do this"):
      os.kill(os.getpid(), signum)
      time.sleep(5)  # the handler raises at the next bytecode
  assert e.value.exit_code == 128 + signum
  assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_stop_on_signals_keeps_an_ignored_signal_ignored():
  previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
  try:
    with stop_on_signals("the test"):
      os.kill(os.getpid(), signal.SIGHUP)
      time.sleep(0.05)
      assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGHUP, previous)
