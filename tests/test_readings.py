"""The MEGAN-specific readings of the paper (issues 11 and 18, docs/ARCHITECTURE.md): each test fails
when the module implements the other reading. Modules run alone at toy width."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megan_jax.models import ModelSpec, build_model, model_config
from megan_jax.models.layers import ConvSpec
from megan_jax.models.lmga import LMGA, adjacency, node_indices
from megan_jax.models.megan import FrontEnd
from megan_jax.models.reconstruction import ProgressiveFusionBlock

SPEC = ConvSpec(4, 1, jnp.float32, "jnp")


def lmga(**readings):
  r = dict(pool="clip", node_embed="concat", graph="per_layer", self_loops=False, output="refine")
  r.update(readings)
  return LMGA(SPEC, 4, 2, **r)


def calls(module, variables, x, **kwargs):
  """(module path, first argument) of every submodule __call__, in call order."""
  seen = []

  def record(next_fun, args, kwargs_, context):
    if context.method_name == "__call__" and context.module.path:
      seen.append(("/".join(context.module.path), args[0] if args else None))
    return next_fun(*args, **kwargs_)

  with nn.intercept_methods(record):
    module.apply(variables, x, **kwargs)
  return seen


def call_outputs(module, variables, x, **kwargs):
  """{module path: output} of every submodule __call__ (the last call of a path wins)."""
  seen = {}

  def record(next_fun, args, kwargs_, context):
    out = next_fun(*args, **kwargs_)
    if context.method_name == "__call__" and context.module.path:
      seen["/".join(context.module.path)] = out
    return out

  with nn.intercept_methods(record):
    module.apply(variables, x, **kwargs)
  return seen


def test_megan_config_has_the_numbers_of_sec_3_6():
  """Sec. 3.6: m1 = 3, m2, m3 = 5, 20, tau = 4, K = 2; Sec. 5: "removing two NLRB blocks"."""
  c = model_config("megan")
  assert (c.front_convs, c.pfrdb_blocks, c.back_rbs, c.lmga_tau, c.lmga_layers) == (3, 5, 20, 4, 2)
  assert c.use_nlrb and c.nlrb_blocks == 2 and c.use_lmga and c.use_pfrdb and c.front_rbs == 0


def test_vimeo_schedule_is_sgdr_cycles_from_1e4_to_1e7_of_20000_steps():
  """Sec. 3.6: "Using a cosine annealing strategy [32] (SGDR, warm restarts), the initial learning
  rate starts with 1e-4, and is annealed to 1e-7 after 20000 iterations": the cosine's values at 0,
  10,000 (the midpoint, (1e-4 + 1e-7) / 2) and just before 20,000 steps, derived by hand, then the
  restart at 20,000; num_steps=20000 is the literal single cycle."""
  import sys  # pylint: disable=import-outside-toplevel
  import train_fakes  # pylint: disable=import-outside-toplevel
  from megan_jax import train  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, train_fakes.REPO)
  from configs import vimeo  # pylint: disable=import-outside-toplevel
  c = vimeo.get_config()
  assert c.optimizer.cycle_steps == 20_000 and c.num_steps == 600_000
  lr = train.lr_schedule(c.optimizer, c.num_steps)
  for step, want in ((0, 1e-4), (10_000, (1e-4 + 1e-7) / 2), (19_999, 1e-7), (20_000, 1e-4),
                     (30_000, (1e-4 + 1e-7) / 2), (599_999, 1e-7)):
    assert abs(float(lr(step)) - want) < 1e-3 * want, step
  lr = train.lr_schedule(c.optimizer, 20_000)
  assert abs(float(lr(20_000)) - 1e-7) < 1e-10


def test_front_end_runs_nlrbs_before_the_m1_convs():
  """Sec. 3.1's order: shallow conv, NLRBs, then the m1 convs; "convs_first" is the other reading."""
  x = jnp.ones((1, 4, 8, 8, 3))
  for order, expected in (("nlrb_first", ["conv_first", "nlrb0", "m1_conv0"]),
                          ("convs_first", ["conv_first", "m1_conv0", "nlrb0"])):
    cfg = model_config("tiny")
    cfg.front_order = order
    front = FrontEnd(ModelSpec.from_config(cfg))
    variables = front.init(jax.random.key(0), x)
    top = [path for path, _ in calls(front, variables, x) if "/" not in path]
    assert top == expected, order


def test_global_pool_is_one_pool_per_clip_drawn_from_every_frame():
  """Sec. 3.3: "we randomly shuffle and pick tau indices from the ordered index sequence {1, ..., 2n+1}
  to create the global pool G": one pool of tau distinct frames per clip, shared by every key frame,
  from all 2n+1 frames (over these 15 clips every frame, each key included, is drawn)."""
  t, tau = 7, 4
  drawn = set()
  for seed in range(5):
    nodes = np.asarray(node_indices(jax.random.key(seed), 3, t, tau, "clip"))  # (B, T, phi)
    for clip in nodes:
      assert clip[:, 0].tolist() == list(range(t))
      assert all(row[1:].tolist() == clip[0, 1:].tolist() for row in clip)
      assert len(set(clip[0, 1:])) == tau
      drawn |= set(clip[0, 1:].tolist())
  assert drawn == set(range(t))
  # Evaluation: round(linspace(0, 6, 4)) = 0, 2, 4, 6 for every key frame, derived by hand.
  ev = np.asarray(node_indices(None, 1, t, tau, "clip"))[0]
  assert ev[1].tolist() == [1, 0, 2, 4, 6] and ev[2].tolist() == [2, 0, 2, 4, 6]


def test_global_pool_of_the_others_reading_never_holds_the_key_frame():
  t, tau = 7, 4
  for seed in range(5):
    nodes = np.asarray(node_indices(jax.random.key(seed), 3, t, tau, "others"))  # (B, T, phi)
    for row in nodes.reshape(-1, tau + 1):
      assert row[0] not in row[1:] and len(set(row[1:])) == tau
  # Evaluation: round(linspace) over the 6 other frames, derived by hand (0, 1.67, 3.33, 5 -> 0, 2, 3, 5).
  ev = np.asarray(node_indices(None, 1, t, tau, "others"))[0]
  assert ev[0].tolist() == [0, 1, 3, 4, 6]
  assert ev[3].tolist() == [3, 0, 2, 4, 6]
  assert ev[6].tolist() == [6, 0, 2, 3, 5]


@pytest.mark.parametrize("self_loops", [False, True])
def test_softmax_of_a_node_runs_over_its_neighbours(self_loops):
  """|E| = |V|(phi - 1): without self-loops the weights of a node sum to one over the phi - 1 other
  nodes and never include itself; checked against a numpy softmax written per node."""
  x = np.asarray(jax.random.normal(jax.random.key(0), (1, 2, 5, 3, 3, 4)))  # (B, T, phi, H, W, C)
  f = lambda d: jnp.sum(d, -1)  # an edge function: (..., H, W, C) -> (..., H, W)
  adj = np.asarray(adjacency(f, jnp.asarray(x), self_loops))  # (B, T, phi, phi, H, W)
  for t in range(2):
    for p in range(5):
      qs = [q for q in range(5) if self_loops or q != p]
      logits = np.stack([np.abs(x[0, t, p] - x[0, t, q]).sum(-1) for q in qs])  # (|qs|, H, W)
      want = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
      np.testing.assert_allclose(adj[0, t, p, qs], want, rtol=1e-5, atol=1e-6)
      if not self_loops:
        assert np.all(adj[0, t, p, p] == 0)
  np.testing.assert_allclose(adj.sum(3), 1.0, rtol=1e-5)


def test_layer_two_builds_its_own_graph():
  """Eq. (13)'s A^k: with "per_layer" layer 2 has its own edge function, fed with the layer-1 output,
  so its graph differs from layer 1's; with "shared" one edge function is evaluated once."""
  feats = jax.random.normal(jax.random.key(0), (1, 5, 4, 4, 4))
  for graph, names in (("per_layer", ["edges1", "edges2"]), ("shared", ["edges"])):
    module = lmga(graph=graph)
    variables = module.init(jax.random.key(1), feats, train=False)
    inputs = {p: a for p, a in calls(module, variables, feats, train=False) if p.startswith("edges")
              and "/" not in p}
    assert sorted(inputs) == names
    if graph == "per_layer":
      assert float(jnp.max(jnp.abs(inputs["edges1"] - inputs["edges2"]))) > 1e-3


def test_node_embedding_concatenates_the_key_feature_with_each_node():
  """Eq. (12), M = N_g(L, G): N_g's first conv sees [F_t, F_q] for every node q of key frame t."""
  feats = jax.random.normal(jax.random.key(0), (1, 5, 4, 4, 4))
  module = lmga(node_embed="concat")
  variables = module.init(jax.random.key(1), feats, train=False)
  embed_in = dict(calls(module, variables, feats, train=False))["embed1"]  # (B, T, phi, H, W, 2C)
  nodes = np.asarray(node_indices(None, 1, 5, 4, "clip"))[0]  # (T, phi)
  f = np.asarray(feats[0])
  for t in range(5):
    for k, q in enumerate(nodes[t]):
      np.testing.assert_array_equal(np.asarray(embed_in[0, t, k]), np.concatenate([f[t], f[q]], -1))


@pytest.mark.parametrize("output", ["refine", "concat", "residual"])
def test_output_is_the_two_conv_refinement_of_the_key_node(output):
  """Sec. 3.3: "To refine the enriched intermediate features set {E^{K+1}_t}, we use a small network
  containing two convolutional layers": with "refine" the first conv sees the key node X^K_t alone
  (LeakyReLU of graph2's output at node 0), with "concat" [F_t, X^K_t]; with refine2 zeroed the
  output is zero (no residual) except for "residual", which returns F_t."""
  feats = jax.random.normal(jax.random.key(0), (1, 5, 4, 4, 4))
  module = lmga(output=output)
  variables = module.init(jax.random.key(1), feats, train=False)
  key = np.asarray(nn.leaky_relu(call_outputs(module, variables, feats, train=False)["graph2"][:, :, 0],
                                 0.1))
  want_in = {"concat": np.concatenate([np.asarray(feats), key], -1)}.get(output, key)
  np.testing.assert_allclose(np.asarray(dict(calls(module, variables, feats, train=False))["refine1"]),
                             want_in, rtol=1e-6, atol=1e-6)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.zeros_like(a) if "refine2" in jax.tree_util.keystr(path) else a, variables)
  want = np.asarray(feats) if output == "residual" else np.zeros(feats.shape)
  np.testing.assert_allclose(np.asarray(module.apply(variables, feats, train=False)), want, atol=1e-6)


def numpy_pfrdb(x, w_frame, b_frame, w_distill, b_distill, w_fuse, b_fuse, slope):
  """PFNL's PFRB in float64 numpy: every conv followed by LeakyReLU(slope), residual add. x: (T, H, W, C)."""
  act = lambda y: np.where(y > 0, y, slope * y)

  def conv3(y, w, b):  # 'same' 3x3 conv, zero padding: (..., H, W, Cin) -> (..., H, W, Cout)
    h, wd = y.shape[-3:-1]
    yp = np.pad(y, [(0, 0)] * (y.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
    return sum(yp[..., i:i + h, j:j + wd, :] @ w[i, j] for i in range(3) for j in range(3)) + b

  a = act(conv3(x, w_frame, b_frame))  # (T, H, W, C)
  d = act(np.concatenate(list(a), -1) @ w_distill[0, 0] + b_distill)  # (H, W, C)
  fused = np.concatenate([a, np.broadcast_to(d, a.shape)], -1)
  return x + act(conv3(fused, w_fuse, b_fuse))


def test_pfrdb_matches_pfnl():
  """Activation after the 1x1 distillation and slope 0.2, as PFNL's conv10 (tf.nn.leaky_relu)."""
  block = ProgressiveFusionBlock(SPEC, 0.2)
  x = jax.random.normal(jax.random.key(0), (1, 3, 5, 6, 4))
  params = block.init(jax.random.key(1), x)
  params = jax.tree_util.tree_map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape), params)
  p = {n: [np.asarray(params["params"][n]["Conv_0"][k], np.float64) for k in ("kernel", "bias")]
       for n in ("frame", "distill", "fuse")}
  want = numpy_pfrdb(np.asarray(x[0], np.float64), *p["frame"], *p["distill"], *p["fuse"], 0.2)
  np.testing.assert_allclose(np.asarray(block.apply(params, x))[0], want, rtol=1e-4, atol=1e-5)


def test_model_spec_is_frozen_and_names_bad_fields():
  cfg = model_config("tiny")
  model = build_model(cfg)
  cfg.nf = 16  # editing the ConfigDict afterwards does not reach the built model
  assert model.spec.nf == 8 and model == build_model(model_config("tiny"))
  hash(model.spec)
  cfg = model_config("tiny")
  cfg.lmga_graph = "every_layer"
  with pytest.raises(ValueError, match=r"model\.lmga_graph='every_layer'; expected one of"):
    build_model(cfg)
  del cfg["lmga_graph"]
  with pytest.raises(ValueError, match=r"the model config lacks \['lmga_graph'\]"):
    build_model(cfg)
