"""Independent references for the MEGAN-specific equations that the official Zooming Slow-Mo fixture
(test_convert) cannot cover: LMGA's Eq. (12)-(13) written as numpy loops over nodes and neighbours, and
the interleave of observed and synthesised frame features (Sec. 3.2) built by hand from the modules'
own outputs. Modules run alone at toy width (issue 31)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megan_jax.models import ModelSpec, model_config
from megan_jax.models.convlstm import BiDeformableConvLSTM
from megan_jax.models.layers import ConvSpec
from megan_jax.models.lmga import LMGA
from megan_jax.models.megan import MEGAN


def lrelu(y, slope=0.1):
  return np.where(y > 0, y, slope * y)


def conv3(y, p):
  """'same' 3x3 correlation with zero padding, float64: (..., H, W, Cin) -> (..., H, W, Cout)."""
  w, b = np.asarray(p["Conv_0"]["kernel"], np.float64), np.asarray(p["Conv_0"]["bias"], np.float64)
  h, wd = y.shape[-3:-1]
  yp = np.pad(y, [(0, 0)] * (y.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
  return sum(yp[..., i:i + h, j:j + wd, :] @ w[i, j] for i in range(3) for j in range(3)) + b


def numpy_lmga(feats, p, nodes, layers, graph, self_loops):
  """Eq. (12)-(13) and the refinement, per key frame t, node p and neighbour q, in float64 numpy.

  feats (T, H, W, C); nodes[t] = [t, g_1, ..., g_tau] (the evaluation pool). Eq. (12): node k of key t
  is N_g([F_t, F_{nodes[t][k]}]) (three convs). Edges: A_pq = softmax over the neighbours q of
  f(|X_p - X_q|), f = conv(LeakyReLU(conv)). Eq. (13): X^k_p = LeakyReLU(W_k * sum_q A^k_pq X^{k-1}_q).
  Output: refine2(LeakyReLU(refine1(X^K_key))).
  """
  t_len, phi = len(feats), len(nodes[0])
  out = []
  for t in range(t_len):
    x = [conv3(lrelu(conv3(lrelu(conv3(np.concatenate([feats[t], feats[q]], -1), p["embed1"])),
                           p["embed2"])), p["embed3"]) for q in nodes[t]]
    for k in range(1, layers + 1):
      if graph == "per_layer" or k == 1:
        f = p[f"edges{k}"] if graph == "per_layer" else p["edges"]
        logit = [[conv3(lrelu(conv3(np.abs(x[a] - x[b]), f["conv1"])), f["conv2"])[..., 0]
                  for b in range(phi)] for a in range(phi)]
      new = []
      for a in range(phi):
        qs = [b for b in range(phi) if self_loops or b != a]
        lg = np.stack([logit[a][b] for b in qs])  # (neighbours, H, W)
        weight = np.exp(lg - lg.max(0))
        weight /= weight.sum(0)
        agg = sum(weight[i][..., None] * x[b] for i, b in enumerate(qs))  # sum_q A_pq X_q
        new.append(lrelu(conv3(agg, p[f"graph{k}"])))
      x = new
    out.append(conv3(lrelu(conv3(x[0], p["refine1"])), p["refine2"]))
  return np.stack(out)


@pytest.mark.parametrize("graph,self_loops", [("per_layer", False), ("shared", True)])
def test_lmga_eq13_aggregation_matches_a_numpy_loop_over_nodes_and_neighbours(graph, self_loops):
  """Eq. (13) sums A_pq X_q over the neighbours q of node p (row p of the adjacency): the transposed
  adjacency (A_qp), a neighbour set with or without the node itself, a layer reusing the wrong graph or
  a missing LeakyReLU each change the output by far more than the tolerance."""
  t, c = 5, 4
  module = LMGA(ConvSpec(c, 1, jnp.float32, "jnp"), 4, 2, pool="clip", node_embed="concat", graph=graph,
                self_loops=self_loops, output="refine")
  feats = jax.random.normal(jax.random.key(0), (1, t, 4, 4, c))
  variables = module.init(jax.random.key(1), feats, train=False)
  # Biases away from zero, so that a dropped bias shows too.
  leaves, tree = jax.tree_util.tree_flatten(variables)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  variables = jax.tree_util.tree_unflatten(
      tree, [a + 0.2 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  # Evaluation pool, by hand: round(linspace(0, 4, 4)) = round(0, 1.33, 2.67, 4) = 0, 1, 3, 4.
  nodes = [[key, 0, 1, 3, 4] for key in range(t)]
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  want = numpy_lmga(np.asarray(feats[0], np.float64), p, nodes, 2, graph, self_loops)
  got = np.asarray(module.apply(variables, feats, train=False))[0]
  # Measured max |got - want|: 1.1e-5 (per_layer) and 4.0e-6 (shared), float32 against float64 on
  # outputs up to 20 in magnitude; 1e-4 is 9x the larger.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  assert np.abs(want).max() > 1  # the reference is not trivially small


def test_interleave_puts_observed_frames_at_even_and_synthesised_at_odd_positions():
  """Sec. 3.2: the ConvLSTM sees F_1, F_2, F_3, ..., F_{2n+1}: the n+1 observed frames' features (the
  front end's L1) at positions 0, 2, ..., 2n and the n synthesised ones (the feature interpolation's
  output for the pair (i, i+1)) at 2i+1. Built by hand from the two modules' outputs."""
  cfg = model_config("tiny")
  cfg.update(use_nlrb=False, use_lmga=False, use_pfrdb=False, back_rbs=0)
  model = MEGAN(ModelSpec.from_config(cfg))
  x = jax.random.uniform(jax.random.key(1), (1, 3, 8, 8, 3))  # n + 1 = 3 frames: 5 features
  seen = {}

  class Stop(Exception):
    pass

  def record(next_fun, args, kwargs, context):
    path = "/".join(context.module.path)
    if context.method_name == "__call__" and path == "convlstm":
      seen[path] = args[0]
      raise Stop  # what follows is not needed: the ConvLSTM's input is the interleave
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and path in ("front", "interp"):
      seen[path] = out
    return out

  with nn.intercept_methods(record), pytest.raises(Stop):
    model.init(jax.random.key(0), x)  # init runs the forward with its fresh parameters
  observed = np.asarray(seen["front"]).reshape(1, 3, 8, 8, cfg.nf)  # (B T, H, W, C) -> (B, T, ...)
  synthesised = np.asarray(seen["interp"])  # (B, n, H, W, C)
  lstm_in = np.asarray(seen["convlstm"])  # (B, 2n+1, H, W, C)
  want = np.stack([observed[0, 0], synthesised[0, 0], observed[0, 1], synthesised[0, 1], observed[0, 2]])
  assert np.abs(observed - synthesised[:, :1]).max() > 1e-3  # the two kinds of feature differ
  np.testing.assert_array_equal(lstm_in[0], want)


def test_scan_unroll_changes_speed_only():
  """model.scan_unroll is documented as speed only: the bidirectional ConvLSTM with the scan unrolled
  (7 >= the 3 steps here: the loop fully unrolled, as unroll 7 is over the 7 frames of MEGAN) gives
  unroll 1's output to float tolerance. Random non-zero weights, offset convs included."""
  spec = ConvSpec(4, 1, jnp.float32, "jnp")
  x = jax.random.normal(jax.random.key(0), (1, 3, 8, 8, 4))
  shapes = jax.eval_shape(BiDeformableConvLSTM(spec, 1).init, jax.random.key(1), x)
  leaves, tree = jax.tree_util.tree_flatten(shapes)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  variables = jax.tree_util.tree_unflatten(
      tree, [0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  one = np.asarray(jax.jit(BiDeformableConvLSTM(spec, 1).apply)(variables, x))
  seven = np.asarray(jax.jit(BiDeformableConvLSTM(spec, 7).apply)(variables, x))
  # Measured max |difference| 2.4e-7 on outputs up to 1.2 (float32 reassociation); 2e-6 is 8x it.
  np.testing.assert_allclose(seven, one, rtol=0, atol=2e-6)
  assert np.abs(one).max() > 0.5
