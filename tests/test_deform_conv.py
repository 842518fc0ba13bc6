"""megan_jax.kernels.deform_conv2d against an independent numpy loop, lax.conv and finite differences."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from megan_jax.kernels import deform_conv2d, deform_conv_pallas, deform_sample

IMPLS = ("jnp", "pallas")


def _bilinear_loop(img, py, px):
  """Bilinear sample of img (H, W, C) at (py, px); corners outside the image contribute zero."""
  h, w, _ = img.shape
  y0, x0 = math.floor(py), math.floor(px)
  ly, lx = py - y0, px - x0
  acc = np.zeros(img.shape[-1])
  for yy, wy in ((y0, 1.0 - ly), (y0 + 1, ly)):
    for xx, wx in ((x0, 1.0 - lx), (x0 + 1, lx)):
      if 0 <= yy < h and 0 <= xx < w:
        acc += wy * wx * img[yy, xx]
  return acc


def deform_conv_loop(x, offset, mask, weight, bias, stride, padding, dilation, groups):
  """DCNv2 by explicit loops over output positions, groups and taps (float64 numpy)."""
  x, offset, weight = (np.asarray(a, np.float64) for a in (x, offset, weight))
  b, h, w, cin = x.shape
  kh, kw, _, cout = weight.shape
  k = kh * kw
  cg = cin // groups
  ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
  wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
  out = np.zeros((b, ho, wo, cout))
  for n in range(b):
    for oy in range(ho):
      for ox in range(wo):
        for g in range(groups):
          chans = slice(g * cg, (g + 1) * cg)
          for i in range(kh):
            for j in range(kw):
              t = i * kw + j
              py = oy * stride - padding + i * dilation + offset[n, oy, ox, (g * k + t) * 2]
              px = ox * stride - padding + j * dilation + offset[n, oy, ox, (g * k + t) * 2 + 1]
              m = 1.0 if mask is None else float(mask[n, oy, ox, g * k + t])
              val = m * _bilinear_loop(x[n, :, :, chans], py, px)
              out[n, oy, ox] += val @ weight[i, j, chans]
  if bias is not None:
    out += np.asarray(bias, np.float64)
  return out


def _inputs(rng, b, h, w, cin, cout, k, groups, stride, padding, dilation, far=True):
  ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
  wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
  x = rng.normal(size=(b, h, w, cin))
  offset = rng.normal(scale=1.5, size=(b, ho, wo, 2 * groups * k * k))  # fractional, negative
  if far:  # some taps far outside the image, some straddling its border
    offset.reshape(-1)[rng.choice(offset.size, offset.size // 8, replace=False)] *= 12.0
  mask = rng.uniform(size=(b, ho, wo, groups * k * k))
  weight = rng.normal(scale=0.3, size=(k, k, cin, cout))
  bias = rng.normal(size=(cout,))
  return x, offset, mask, weight, bias


CASES = [  # (groups, stride, padding, dilation, use_mask, use_bias, cin); W = 6
    (1, 1, 1, 1, True, True, 4),
    (2, 1, 1, 1, True, False, 4),
    (4, 1, 0, 1, False, True, 4),
    (1, 2, 1, 1, True, True, 4),
    (2, 2, 0, 2, False, False, 4),
    (4, 1, 1, 2, True, True, 4),
    (2, 2, 1, 2, True, True, 4),
    # Cin / G not a power of 2 (the Pallas kernel uses 3 of 4, 3 of 4 and 5 of 8 lanes)
    (2, 1, 1, 1, True, True, 6),
    (4, 2, 1, 1, True, False, 12),
    (1, 1, 2, 2, False, True, 5),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("groups,stride,padding,dilation,use_mask,use_bias,cin", CASES)
def test_matches_numpy_loop(impl, groups, stride, padding, dilation, use_mask, use_bias, cin):
  rng = np.random.default_rng(groups * 100 + stride * 10 + padding * 3 + dilation + cin * 1000)
  x, offset, mask, weight, bias = _inputs(rng, 2, 7, 6, cin, 3, 3, groups, stride, padding,
                                          dilation)
  mask = mask if use_mask else None
  bias = bias if use_bias else None
  want = deform_conv_loop(x, offset, mask, weight, bias, stride, padding, dilation, groups)
  f = jax.jit(functools.partial(deform_conv2d, stride=stride, padding=padding, dilation=dilation,
                                deformable_groups=groups, impl=impl))
  as32 = lambda a: None if a is None else jnp.asarray(a, jnp.float32)
  got = f(as32(x), as32(offset), as32(mask), as32(weight), as32(bias))
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_deform_sample_columns(impl):
  """The gather step alone: columns [.., k, c] equal the loop's modulated bilinear samples."""
  rng = np.random.default_rng(7)
  x, offset, mask, _, _ = _inputs(rng, 1, 5, 5, 4, 1, 3, 2, 1, 1, 1)
  f = jax.jit(functools.partial(deform_sample, kernel_size=(3, 3), deformable_groups=2, impl=impl))
  cols = f(*(jnp.asarray(a, jnp.float32) for a in (x, offset, mask)))
  assert cols.shape == (1, 5, 5, 9, 4)
  oy, ox, g, t = 2, 3, 1, 5
  i, j = divmod(t, 3)
  py = oy - 1 + i + offset[0, oy, ox, (g * 9 + t) * 2]
  px = ox - 1 + j + offset[0, oy, ox, (g * 9 + t) * 2 + 1]
  want = mask[0, oy, ox, g * 9 + t] * _bilinear_loop(x[0, :, :, 2:4], py, px)
  np.testing.assert_allclose(np.asarray(cols[0, oy, ox, t, 2:4]), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_samples_on_and_beyond_the_border(impl):
  """Positions exactly on the border rows/columns, half a pixel and one pixel beyond them, and
  far away: each corner outside the 4x5 image contributes zero (the loop's semantics)."""
  h, w = 4, 5
  points = [-2.0, -1.0, -0.5, 0.0, 0.25, 2.5, 3.0, 3.5, 4.0, 4.75, 5.0, 9.0]
  wide = 12 * 16  # the image is widened with zeros to one column per sampled point
  grid = [(py, px) for py in points for px in points + [wide - 1, wide - 0.5, wide, wide + 3]]
  x = np.random.default_rng(3).normal(size=(1, h, w, 2))
  # A 1x1 kernel with padding 0: output (r, c) samples (r + dy, c + dx); every output row samples
  # the same points, one output column per point.
  xw = np.concatenate([x, np.zeros((1, h, wide - w, 2))], 2)
  xw[0, :, -1] = 1.0  # the right border column, so that it is sampled too
  offset = np.broadcast_to(np.asarray(grid), (1, h, len(grid), 2)).copy()
  offset[..., 0] -= np.arange(h)[:, None]
  offset[..., 1] -= np.arange(len(grid))
  cols = deform_sample(jnp.asarray(xw, jnp.float32), jnp.asarray(offset, jnp.float32),
                       kernel_size=(1, 1), padding=0, impl=impl)  # (1, H, Wo, 1, 2)
  want = np.stack([_bilinear_loop(xw[0], py, px) for py, px in grid])
  for r in range(h):
    np.testing.assert_allclose(np.asarray(cols[0, r, :, 0]), want, rtol=1e-5, atol=1e-5)
  assert np.abs(want).sum() > 0 and (np.abs(want).sum(-1) == 0).sum() > 10  # both kinds occur


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("groups,stride,padding,dilation",
                         [(1, 1, 1, 1), (2, 2, 1, 1), (4, 1, 2, 2)])
def test_zero_offset_is_convolution(impl, groups, stride, padding, dilation):
  rng = np.random.default_rng(3)
  x, offset, mask, weight, bias = _inputs(rng, 2, 8, 8, 4, 5, 3, groups, stride, padding, dilation)
  x, weight, bias = (jnp.asarray(a, jnp.float32) for a in (x, weight, bias))
  f = jax.jit(functools.partial(deform_conv2d, stride=stride, padding=padding, dilation=dilation,
                                deformable_groups=groups, impl=impl))
  got = f(x, jnp.zeros(offset.shape), jnp.ones(mask.shape), weight, bias)
  want = jax.lax.conv_general_dilated(
      x, weight, (stride, stride), [(padding, padding)] * 2, rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest") + bias
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.fixture
def x64():
  """float64 for the duration of one test (the `jax.enable_x64` context restores the flag)."""
  with jax.enable_x64(True):
    yield


def _central_differences(f, args, eps=1e-6):
  grads = []
  for a in range(len(args)):
    g = np.zeros(args[a].shape)
    for idx in np.ndindex(args[a].shape):
      hi = [np.array(v) for v in args]
      lo = [np.array(v) for v in args]
      hi[a][idx] += eps
      lo[a][idx] -= eps
      g[idx] = (float(f(*hi)) - float(f(*lo))) / (2 * eps)
    grads.append(g)
  return grads


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_finite_differences(impl, x64):
  rng = np.random.default_rng(11)
  x, _, mask, weight, bias = _inputs(rng, 1, 4, 4, 2, 2, 3, 2, 1, 1, 1)
  # Offsets away from integer sampling points (bilinear weights are not smooth there); some taps
  # straddle the border and some lie entirely outside the image.
  frac = rng.uniform(0.2, 0.8, size=(1, 4, 4, 2 * 2 * 9))
  offset = rng.integers(-3, 3, size=frac.shape) + frac
  offset[0, 0, 0, :4] = [-7.4, 0.3, 2.6, 9.5]
  cot = rng.normal(size=(1, 4, 4, 2))
  f = jax.jit(lambda *a: jnp.sum(cot * deform_conv2d(*a, deformable_groups=2, impl=impl)))
  args = (x, offset, mask, weight, bias)
  got = jax.grad(f, argnums=range(5))(*(jnp.asarray(a) for a in args))
  want = _central_differences(f, args)
  for name, g, w in zip(("x", "offset", "mask", "weight", "bias"), got, want):
    assert g.dtype == jnp.float64, name
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("b,h,w,cin,groups,stride,max_columns", [
    (2, 6, 5, 8, 4, 2, None),  # Cg = 2, Wo = 3: one block of BW = 4 columns
    (1, 5, 10, 6, 2, 1, None),  # Cg = 3 in 4 lanes, Wo = 10: one block of BW = 16 columns
    (1, 5, 10, 6, 2, 1, 4),  # Wo = 10 in blocks of BW = 4 columns: 4 + 4 + 2 (of 4)
    (2, 4, 9, 6, 1, 2, 2),  # Cg = 6 in 8 lanes, Wo = 5 in blocks of 2: 2 + 2 + 1 (of 2)
])
def test_pallas_matches_jnp_values_and_gradients(b, h, w, cin, groups, stride, max_columns,
                                                 monkeypatch):
  if max_columns is not None:
    monkeypatch.setattr(deform_conv_pallas, "_MAX_COLUMNS", max_columns)
  rng = np.random.default_rng(5 + cin + w)
  args = [jnp.asarray(a, jnp.float32)
          for a in _inputs(rng, b, h, w, cin, 4, 3, groups, stride, 1, 1)]
  ho, wo = args[1].shape[1:3]
  cot = jnp.asarray(rng.normal(size=(b, ho, wo, 4)), jnp.float32)

  def loss(impl, *a):
    return jnp.sum(cot * deform_conv2d(*a, stride=stride, deformable_groups=groups, impl=impl))

  for use_mask in (True, False):
    a = list(args) if use_mask else [args[0], args[1], None, args[3], args[4]]
    argnums = (0, 1, 2, 3, 4) if use_mask else (0, 1, 3, 4)
    vj, gj = jax.jit(jax.value_and_grad(functools.partial(loss, "jnp"), argnums))(*a)
    vp, gp = jax.jit(jax.value_and_grad(functools.partial(loss, "pallas"), argnums))(*a)
    np.testing.assert_allclose(float(vp), float(vj), rtol=1e-5)
    for g_p, g_j in zip(gp, gj):
      np.testing.assert_allclose(np.asarray(g_p), np.asarray(g_j), rtol=1e-4, atol=1e-4)


# The custom-call targets of a Pallas Triton kernel in a module lowered for CUDA: jaxlib <= 0.10.2
# leaves the Triton IR for XLA to compile; later jaxlibs compile it while lowering.
TRITON_CALL_TARGETS = ("__gpu$xla.gpu.triton", "triton_kernel_call_ffi")


def _triton_calls(lowered) -> int:
  text = lowered.as_text()
  return sum(text.count(f"custom_call @{name}(") for name in TRITON_CALL_TARGETS)


@functools.cache
def _cuda_triton_unavailable():
  """Why this jaxlib cannot cross-lower a trivial Pallas Triton kernel for CUDA, or None."""
  def add_one(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1

  f = pl.pallas_call(add_one, out_shape=jax.ShapeDtypeStruct((8,), jnp.float32),
                     compiler_params=plgpu.CompilerParams(), interpret=False)
  try:
    lowered = jax.jit(f).trace(jnp.zeros(8, jnp.float32)).lower(lowering_platforms=("cuda",))
  except Exception as e:  # any failure here is the jaxlib's, not the kernel's
    return f"{type(e).__name__}: {e}"
  return None if _triton_calls(lowered) == 1 else f"none of {TRITON_CALL_TARGETS} in its module"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("stride", [1, 2])
def test_pallas_lowers_for_cuda_through_triton(stride, dtype):
  """Cross-lowers (on the CPU) the kernels for CUDA: Wo = 10 or 5 and Cg = 3, not powers of 2.

  This checks that Pallas's Triton backend accepts them (power-of-2 arrays, supported ops); it
  does not compile them with Triton nor run them, which needs a GPU.
  """
  reason = _cuda_triton_unavailable()
  if reason is not None:
    pytest.skip(f"this jaxlib cannot cross-lower Pallas Triton kernels for CUDA: {reason}")
  rng = np.random.default_rng(17)
  x, offset, mask, _, _ = (jnp.asarray(a, dtype)
                           for a in _inputs(rng, 2, 5, 10, 6, 1, 3, 2, stride, 1, 1))
  f = functools.partial(deform_conv_pallas.deform_sample_pallas, kernel_size=(3, 3),
                        stride=stride, padding=1, dilation=1, deformable_groups=2, interpret=False)
  fwd = jax.jit(f).trace(x, offset, mask).lower(lowering_platforms=("cuda",))
  assert _triton_calls(fwd) == 1
  loss = lambda *a: jnp.sum(f(*a).astype(jnp.float32) ** 2)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, offset, mask).lower(
      lowering_platforms=("cuda",))
  assert _triton_calls(grad) == 2  # the forward kernel and the d offset / d mask kernel


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_close_to_float32(impl):
  rng = np.random.default_rng(9)
  args = _inputs(rng, 2, 8, 8, 8, 8, 3, 2, 1, 1, 1)
  f = jax.jit(functools.partial(deform_conv2d, deformable_groups=2, impl=impl))
  ref = f(*(jnp.asarray(a, jnp.float32) for a in args))
  got = f(*(jnp.asarray(a, jnp.bfloat16) for a in args))
  assert got.dtype == jnp.bfloat16
  err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - ref)))
  assert err < 0.05 * float(jnp.max(jnp.abs(ref))), err
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=(0, 1, 2)))(
      *(jnp.asarray(a, jnp.bfloat16) for a in args))
  assert all(g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g))) for g in grads)


@pytest.mark.parametrize("impl", IMPLS)
def test_backward_keeps_only_the_inputs(impl, capsys):
  """The sampling is rematerialised: its gradient saves x, offset and mask, not the gathered
  (B, Ho, Wo, G, K, 4, Cg) corners (9 * 4 times x's size here)."""
  x, offset, mask = (jnp.ones((1, 6, 7, 8)), jnp.ones((1, 6, 7, 36)), jnp.ones((1, 6, 7, 18)))
  f = lambda x, o, m: jnp.sum(deform_sample(x, o, m, kernel_size=(3, 3), deformable_groups=2,
                                            impl=impl))
  print_saved_residuals(f, x, offset, mask)
  saved = capsys.readouterr().out.strip().splitlines()
  assert len(saved) == 3 and all("from the argument" in line for line in saved), saved


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_matches_per_example(impl):
  rng = np.random.default_rng(13)
  x, offset, mask, weight, bias = (jnp.asarray(a, jnp.float32)
                                   for a in _inputs(rng, 3, 5, 5, 2, 2, 3, 1, 1, 1, 1))
  f = functools.partial(deform_conv2d, weight=weight, bias=bias, impl=impl)
  batched = jax.jit(jax.vmap(lambda a, o, m: f(a[None], o[None], m[None])[0]))(x, offset, mask)
  np.testing.assert_allclose(np.asarray(batched), np.asarray(jax.jit(f)(x, offset, mask)),
                             rtol=1e-5, atol=1e-5)


def _good():
  return dict(x=np.zeros((2, 6, 6, 4)), offset=np.zeros((2, 6, 6, 36)),
              mask=np.zeros((2, 6, 6, 18)), weight=np.zeros((3, 3, 4, 5)),
              bias=np.zeros((5,)), deformable_groups=2)


@pytest.mark.parametrize("change,name", [
    (dict(x=np.zeros((6, 6, 4))), "x"),
    (dict(x=np.zeros((2, 6, 6, 3)), weight=np.zeros((3, 3, 3, 5))), "deformable_groups"),
    (dict(x=np.zeros((2, 2, 2, 4)), padding=0), "x of spatial size"),
    (dict(offset=np.zeros((2, 6, 6, 18))), r"offset must have shape \(B, Ho, Wo, 2\*G\*kh\*kw\) "
                                            r"= \(2, 6, 6, 36\)"),
    (dict(offset=np.zeros((2, 5, 6, 36))), "offset"),
    (dict(mask=np.zeros((2, 6, 6, 9))), r"mask must have shape .* = \(2, 6, 6, 18\)"),
    (dict(weight=np.zeros((3, 3, 5, 5))), "weight"),
    (dict(weight=np.zeros((3, 4, 5))), "weight"),
    (dict(bias=np.zeros((4,))), "bias"),
    (dict(stride=0), "stride"),
    (dict(impl="cuda"), "impl"),
])
def test_bad_arguments_raise(change, name):
  kwargs = {**_good(), **change}
  with pytest.raises(ValueError, match=name):
    deform_conv2d(**kwargs)
