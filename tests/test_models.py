"""The network: shapes, parameter counts (derived by hand), gradients, determinism, NLRB vs numpy."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megan_jax.models import build_model, model_config
from megan_jax.models.layers import ConvSpec
from megan_jax.models.nonlocal_block import NonLocalResidualBlock, chunked_attention


def conv(cin, cout, k=3):
  return k * k * cin * cout + cout


def expected_param_count(cfg, num_input_frames=4):
  """Parameter count derived from the architecture description, conv by conv."""
  c, g = cfg.nf, cfg.groups
  t_in, t_out = num_input_frames, 2 * num_input_frames - 1
  dcn = conv(c, c) + conv(c, 3 * g * 9)                  # weight + offset/mask conv
  pcd_one_way = (conv(2 * c, c) + conv(c, c) + dcn                                  # level 3
                 + 2 * (conv(2 * c, c) + conv(2 * c, c) + conv(c, c) + dcn + conv(2 * c, c)))
  pcd = 2 * pcd_one_way
  pyramid = 4 * conv(c, c)
  interp = pcd + conv(2 * c, c, 1)
  state_align = pyramid + pcd + conv(2 * c, c, 1)
  lstm = 2 * state_align + conv(2 * c, 4 * c) + conv(2 * c, c, 1)
  front = conv(3, c) + cfg.front_convs * conv(c, c) + cfg.front_rbs * 2 * conv(c, c)
  if cfg.use_nlrb:
    e, r = cfg.nlrb_embed, cfg.nlrb_block
    d = r * r * c * (t_in if cfg.nlrb_scope == "spacetime" else 1)  # channels of a space-time token
    front += cfg.nlrb_blocks * (3 * conv(d, e, 1) + conv(e, d, 1))
  lmga = 0
  if cfg.use_lmga:
    embed = conv(2 * c if cfg.lmga_node_embed == "concat" else c, c) + 2 * conv(c, c)
    graphs = cfg.lmga_layers if cfg.lmga_graph == "per_layer" else 1
    edges = graphs * (conv(c, c) + conv(c, 1))
    refine = conv(2 * c if cfg.lmga_output == "concat" else c, c) + conv(c, c)
    lmga = embed + edges + cfg.lmga_layers * conv(c, c) + refine
  pfrdb = cfg.pfrdb_blocks * (conv(c, c) + conv(t_out * c, c, 1) + conv(2 * c, c)) if cfg.use_pfrdb else 0
  recon = pfrdb + cfg.back_rbs * 2 * conv(c, c)
  hr = cfg.hr_features
  up = conv(c, 4 * c) + conv(c, 4 * hr) + conv(hr, hr) + conv(hr, 3)
  return front + pyramid + interp + lstm + lmga + recon + up


def count(cfg):
  model = build_model(cfg)
  x = jax.ShapeDtypeStruct((1, 4, 16, 16, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), x)
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))


def test_zsm_matches_official_parameter_count():
  assert expected_param_count(model_config("zsm")) == 11_102_771  # the official ZSM (LunaTokis, 40 RBs)
  assert count(model_config("zsm")) == 11_102_771


@pytest.mark.parametrize("variant", ["megan", "no_lmga", "no_nlrb", "small", "tiny"])
def test_parameter_counts(variant):
  assert count(model_config(variant)) == expected_param_count(model_config(variant))


def test_parameter_count_of_the_alternative_readings():
  cfg = model_config("megan")
  cfg.update(front_order="convs_first", nlrb_scope="frame", nlrb_block=1, lmga_pool="others",
             lmga_node_embed="separate", lmga_graph="shared", lmga_self_loops=True,
             lmga_output="residual", pfrdb_slope=0.1)
  assert count(cfg) == expected_param_count(cfg) == 10_377_140  # the model before issue 11
  cfg = model_config("megan")
  cfg.lmga_output = "concat"  # issue 11's LMGA output: the refinement's first conv sees 2C channels
  assert count(cfg) == expected_param_count(cfg) == 10_736_053


def test_megan_has_about_10_7m_parameters():
  """Table 1 and Sec. 3.6 report 10.7M. By hand (C = 64, conv(i, o, k) = k k i o + o): front end 376,960
  (conv(3, 64) 1,792 + 3 x conv(64, 64) 110,784 + 2 NLRBs x (3 conv(1024, 32, 1) + conv(32, 1024, 1))
  264,384); pyramid 147,712, feature interpolation 2,232,272, ConvLSTM 5,063,392 (ZSM's, pinned by
  the :zsm count); LMGA 370,370 (N_g conv(128, 64) + 2 conv(64, 64) 147,648, two edge functions
  2 x (conv(64, 64) + conv(64, 1)) 75,010, two graph convs 73,856, refinement 2 conv(64, 64) 73,856);
  5 PFRDBs x (conv(64, 64) + conv(448, 64, 1) + conv(128, 64)) 697,280; 20 residual blocks 1,477,120;
  upsampler conv(64, 256) + conv(64, 256) + conv(64, 64) + conv(64, 3) 334,083. Sum 10,699,189 (-0.008%)."""
  n = count(model_config("megan"))
  assert n == 10_699_189 and abs(n - 10.7e6) / 10.7e6 < 0.01


TINY = build_model(model_config("tiny"))
init_tiny = jax.jit(lambda key, x: TINY.init({"params": key}, x))


@pytest.fixture(scope="module")
def tiny():
  x = jax.random.uniform(jax.random.key(1), (1, 4, 16, 16, 3))
  return TINY, init_tiny(jax.random.key(0), x), x


@pytest.mark.parametrize("n_in,h,w", [(2, 8, 12), (3, 16, 8), (5, 8, 8)])
def test_output_shapes(n_in, h, w):
  model = build_model(model_config("tiny"))
  x = jnp.ones((2, n_in, h, w, 3)) * 0.5
  out = jax.eval_shape(lambda x: model.init_with_output({"params": jax.random.key(0)}, x)[0], x)
  assert out.shape == (2, 2 * n_in - 1, 4 * h, 4 * w, 3)
  assert out.dtype == jnp.float32


def test_forward_under_jit_is_finite_and_varies(tiny):
  model, params, x = tiny
  y = jax.jit(lambda p, x: model.apply(p, x))(params, x)
  assert y.shape == (1, 7, 64, 64, 3)
  assert bool(jnp.all(jnp.isfinite(y)))
  assert float(jnp.std(y)) > 0


@pytest.mark.parametrize("h,w", [(10, 16), (16, 14)])
def test_rejects_sizes_not_multiple_of_4(tiny, h, w):
  model, params, _ = tiny
  with pytest.raises(ValueError, match="multiple of 4"):
    model.apply(params, jnp.zeros((1, 4, h, w, 3)))


def test_rejects_wrong_layout(tiny):
  model, params, _ = tiny
  with pytest.raises(ValueError, match=r"\(B, n\+1, H, W, 3\)"):
    model.apply(params, jnp.zeros((1, 4, 16, 16)))


def test_gradients_reach_every_parameter(tiny):
  """At init only the zero-initialised offset/mask convs block gradients (to the offset-feature convs
  upstream of them, as in ZSM); once those convs have moved, every parameter receives a gradient."""
  model, params, x = tiny
  params = flax.core.unfreeze(params)
  flat = flax.traverse_util.flatten_dict(params["params"], sep="/")
  key = jax.random.key(7)
  for name, value in flat.items():
    if "conv_offset_mask" in name:
      key, sub = jax.random.split(key)
      flat[name] = 0.01 * jax.random.normal(sub, value.shape)
  params = {"params": flax.traverse_util.unflatten_dict(flat, sep="/")}

  def loss(p):
    y = model.apply(p, x, train=True, rngs={"lmga": jax.random.key(2)})
    return jnp.mean(jnp.sqrt((y - 0.5) ** 2 + 1e-6))

  grads = jax.jit(jax.grad(loss))(params)
  flat = flax.traverse_util.flatten_dict(grads["params"], sep="/")
  dead = [k for k, g in flat.items() if not bool(jnp.any(g != 0)) or not bool(jnp.all(jnp.isfinite(g)))]
  assert not dead, f"parameters without gradient: {dead}"


def test_same_inputs_and_key_give_same_output(tiny):
  model, params, x = tiny
  run = jax.jit(lambda p, x, k: model.apply(p, x, train=True, rngs={"lmga": k}))
  a = run(params, x, jax.random.key(5))
  b = run(params, x, jax.random.key(5))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  params2 = init_tiny(jax.random.key(0), x)
  chex_equal = jax.tree_util.tree_map(lambda u, v: bool(jnp.array_equal(u, v)), params, params2)
  assert all(jax.tree_util.tree_leaves(chex_equal))


def test_training_global_pool_is_random_and_eval_is_deterministic(tiny):
  model, params, x = tiny
  # Perturb LMGA's kernels so that the choice of global frames changes the output.
  p = flax.core.unfreeze(params)
  leaves, tree = jax.tree_util.tree_flatten(p["params"]["lmga"])
  keys = jax.random.split(jax.random.key(9), len(leaves))
  p["params"]["lmga"] = jax.tree_util.tree_unflatten(
      tree, [a + 0.5 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  train = jax.jit(lambda p, x, k: model.apply(p, x, train=True, rngs={"lmga": k}))
  outs = [np.asarray(train(p, x, jax.random.key(s))) for s in range(4)]
  assert any(not np.array_equal(outs[0], o) for o in outs[1:])
  ev = jax.jit(lambda p, x: model.apply(p, x, train=False))
  np.testing.assert_array_equal(np.asarray(ev(p, x)), np.asarray(ev(p, x)))


def test_bfloat16_compute_keeps_float32_params():
  cfg = model_config("tiny")
  cfg.dtype = "bfloat16"
  model = build_model(cfg)
  x = jax.random.uniform(jax.random.key(1), (1, 3, 8, 8, 3))
  y, params = jax.jit(lambda x: model.init_with_output({"params": jax.random.key(0)}, x))(x)
  assert y.dtype == jnp.float32 and y.shape == (1, 5, 32, 32, 3)
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
  y32 = jax.jit(build_model(model_config("tiny")).apply)(params, x)
  # Measured max |y - y32| 0.0021 on outputs up to 0.11 (0.0030 and 0.0037 with other seeds, outputs
  # up to 0.24 and 0.37); 0.01 is 4.8x the measured value. 0.05 passed an output scaled by 0.56-1.44.
  assert float(jnp.max(jnp.abs(y - y32))) < 0.01


def numpy_tokens(x, span, r):
  """PFNL's rearrangement written as loops: frames concatenated on channels (span "spacetime") or
  kept apart ("frame"), then tf.space_to_depth(r): token (i, j) holds x[t, i r + dy, j r + dx, c] at
  channel (dy r + dx) T' C + t' C + c. Returns (groups, positions, channels) and the inverse map."""
  t, h, w, c = x.shape
  frames = [list(range(t))] if span == "spacetime" else [[k] for k in range(t)]
  where = []  # for every (group, position, channel): the (t, y, x, c) it comes from
  for group in frames:
    rows = []
    for i in range(h // r):
      for j in range(w // r):
        rows.append([(f, i * r + dy, j * r + dx, ch) for dy in range(r) for dx in range(r)
                     for f in group for ch in range(c)])
    where.append(rows)
  where = np.array(where)  # (G, N, D, 4)
  return x[tuple(np.moveaxis(where, -1, 0))].astype(np.float64), where


def numpy_nonlocal(x, span, r, wu, bu, wv, bv, wg, bg, wz, bz):
  """Eq. (1)-(3) with the full (N x N) matrix over the tokens, in float64 numpy. x: (T, H, W, C)."""
  tokens, where = numpy_tokens(x, span, r)
  out = x.astype(np.float64).copy()
  for flat, idx in zip(tokens, where):
    u, v, g = flat @ wu + bu, flat @ wv + bv, flat @ wg + bg
    s = u @ v.T
    s = np.exp(s - s.max(axis=1, keepdims=True))
    z = (s / s.sum(axis=1, keepdims=True)) @ g @ wz + bz
    out[tuple(np.moveaxis(idx, -1, 0))] += z
  return out


def nlrb(span, block, impl="chunked", chunk=1024, features=6, embed=3):
  return NonLocalResidualBlock(ConvSpec(features, 1, jnp.float32, "jnp"), embed, span, block, impl, chunk)


@pytest.mark.parametrize("span,block,impl,chunk", [
    ("spacetime", 2, "chunked", 7), ("spacetime", 2, "full", 0), ("spacetime", 2, "xla", 0),
    ("spacetime", 1, "chunked", 1024), ("frame", 1, "chunked", 7), ("frame", 2, "xla", 0)])
def test_nonlocal_block_matches_numpy_reference(span, block, impl, chunk):
  block_ = nlrb(span, block, impl, chunk)
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 6, 6))  # (B, T, H, W, C)
  params = block_.init(jax.random.key(1), x)
  y = np.asarray(block_.apply(params, x))
  p = params["params"]
  get = lambda n: (np.asarray(p[n]["Conv_0"]["kernel"][0, 0], np.float64),
                   np.asarray(p[n]["Conv_0"]["bias"], np.float64))
  for i in range(2):
    ref = numpy_nonlocal(np.asarray(x[i]), span, block, *get("u"), *get("v"), *get("g"), *get("w_z"))
    np.testing.assert_allclose(y[i], ref, rtol=1e-5, atol=1e-5)


def test_nonlocal_block_attends_over_the_clip_in_spacetime_only():
  """Issue 11, finding 1: with span "spacetime" the output at frame 0 depends on frame 2 (PFNL attends
  over all frames jointly); with "frame" it does not."""
  x = jax.random.normal(jax.random.key(0), (1, 3, 4, 4, 6))
  x2 = x.at[:, 2].add(1.0)
  for span, changes in (("spacetime", True), ("frame", False)):
    block = nlrb(span, 2)
    params = block.init(jax.random.key(1), x)
    diff = float(jnp.max(jnp.abs(block.apply(params, x)[:, 0] - block.apply(params, x2)[:, 0])))
    assert (diff > 1e-4) == changes, (span, diff)


@pytest.mark.parametrize("dtype,embed", [(jnp.float32, 32), (jnp.bfloat16, 12)])
def test_cudnn_attention_rejects_what_cudnn_cannot_run(dtype, embed):
  """cuDNN flash attention has no float32 kernel and needs a head width divisible by 8: the error
  names the config fields instead of surfacing from inside cuDNN's lowering."""
  from megan_jax.models.nonlocal_block import attention
  q = jnp.zeros((1, 16, embed), dtype)
  with pytest.raises(ValueError, match="model.attention_impl='cudnn' needs model.dtype='bfloat16'"):
    attention(q, q, q, impl="cudnn", chunk=0)


def test_chunked_attention_gradient_matches_full():
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 37, 4)) for i in range(3))
  f_chunk = lambda q, k, v: jnp.sum(jnp.sin(chunked_attention(q, k, v, 8)))
  f_full = lambda q, k, v: jnp.sum(jnp.sin(
      jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k), -1), v)))
  for a, b in zip(jax.grad(f_chunk, (0, 1, 2))(q, k, v), jax.grad(f_full, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_nonlocal_block_runs_on_a_vid4_sized_frame():
  """180x144 = 25,920 positions per frame: the full matrix would be 2.7 GB; the chunked path is not."""
  block = nlrb("frame", 1, "chunked", 2048, features=8, embed=4)
  x = jnp.ones((1, 1, 144, 180, 8))
  params = block.init(jax.random.key(0), x[:, :, :8, :8])
  compiled = jax.jit(block.apply).lower(params, x).compile()
  mem = compiled.memory_analysis()
  if mem is not None:
    assert mem.temp_size_in_bytes < 1e9
  y = compiled(params, x)
  assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_global_residual_adds_bicubic_and_blending(dtype):
  """With the reconstruction's last conv zeroed the output is exactly the evaluation baseline: MATLAB
  bicubic x4 of the inputs (borders included) and the mean of neighbours in between. With bfloat16
  compute too: the baseline must see the float32 frames (k/255 is rarely a bfloat16, and rounding the
  inputs moves the baseline by up to 2e-3)."""
  from megan_jax.data.imresize import imresize_np
  cfg = model_config("tiny")
  cfg.global_residual = True
  cfg.dtype = dtype
  model = build_model(cfg)
  x = jnp.round(jax.random.uniform(jax.random.key(3), (1, 3, 8, 8, 3)) * 255) / 255  # 8-bit frames
  params = flax.core.unfreeze(jax.jit(lambda x: model.init({"params": jax.random.key(0)}, x))(x))
  last = params["params"]["recon"]["upsampler"]["conv_last"]["Conv_0"]
  last["kernel"], last["bias"] = jnp.zeros_like(last["kernel"]), jnp.zeros_like(last["bias"])
  y = np.asarray(jax.jit(model.apply)(params, x))[0]  # (5, 32, 32, 3)
  up = imresize_np(np.asarray(x[0], np.float64), 4)  # (3, 32, 32, 3)
  for i in range(3):
    np.testing.assert_allclose(y[2 * i], up[i], atol=1e-5)
  for i in range(2):
    np.testing.assert_allclose(y[2 * i + 1], 0.5 * (up[i] + up[i + 1]), atol=1e-5)


def test_zsm_forward_is_pinned():
  """`:zsm` stays the Zooming Slow-Mo network exactly: its parameter tree (names and shapes) and its
  forward are pinned by a fixture made from the code before the MEGAN-specific readings changed
  (issue 11), at toy width, with the zero-initialised offset/mask convs moved so that the deformable
  sampling is pinned too. A converter maps the official ZSM state_dict onto this tree."""
  ref = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "zsm_toy_forward.npz"))
  cfg = model_config("zsm")
  cfg.nf, cfg.groups, cfg.front_rbs, cfg.back_rbs, cfg.hr_features = 4, 2, 1, 1, 4
  model = build_model(cfg)
  x = ref["input"]  # (1, 3, 8, 12, 3)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x))["params"]
  want = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(shapes, sep="/").items()}
  stored = {k.removeprefix("params/"): ref[k] for k in ref.files if k.startswith("params/")}
  assert {k: v.shape for k, v in stored.items()} == want
  y = jax.jit(model.apply)({"params": flax.traverse_util.unflatten_dict(stored, sep="/")}, x)
  np.testing.assert_allclose(np.asarray(y), ref["output"], rtol=0, atol=1e-6)
