"""Long-range memory graph aggregation (LMGA), Sec. 3.3, Eq. (12)-(13).

For every key frame t of the 2n+1 frame features (the local pool) a graph is built over phi = tau + 1
nodes: the key frame and a global pool of tau memory frames (Sec. 3.3; tau = 4, K = 2 in Sec. 3.6). The
readings below are `model.lmga_*` fields; docs/ARCHITECTURE.md quotes the paper for each and names the
alternative.

- Global pool (`lmga_pool`), Sec. 3.3: "we randomly shuffle and pick tau indices from the ordered index
  sequence {1, ..., 2n+1} to create the global pool G". "clip" (default): one pool per clip from all
  2n+1 frames, shared by every key frame (it may hold the key); "others": a pool per key frame from the
  2n frames other than the key. Training draws the first tau entries of a random permutation (RNG
  stream "lmga"); evaluation, on which the text is silent, takes tau frames evenly spread
  (`eval_global_indices`).
- Nodes, Eq. (12) M = N_g(L, G) (`lmga_node_embed`), N_g "containing three convolutional layers":
  "concat" (default): N_g embeds the channel concatenation [F_t, F_q] of the local (key) feature with
  each node's feature; "separate": N_g embeds each node alone (the text allows both).
- Edges, Sec. 3.3: A_pq = softmax_q( f(|E_p - E_q|) ), "the non-linear combination of the absolute
  difference between any two node features", "normalized to a stochastic matrix by using a softmax
  along each row"; f a conv stack (3x3 conv C->C, LeakyReLU, 3x3 conv C->1), one weight per node pair
  and pixel, evaluated once per unordered pair (f is symmetric). Self-loops (`lmga_self_loops`): off by
  default, |E| = |V| x (phi - 1): the softmax of a node runs over its phi - 1 neighbours.
- Graph per layer (`lmga_graph`), Eq. (13): "per_layer" (default): graph G^k with its own f_k is built
  from the layer's input X^{k-1} (the K weighted graphs G^k, "graph construction ... iteratively");
  "shared": one graph from the embeddings, reused by every layer.
- Aggregation, Eq. (13): X^k_p = LeakyReLU(W_k * sum_q A^k_pq X^{k-1}_q), W_k a 3x3 conv, k = 1..K (the
  printed E^k_{p,r} under the sum over neighbours v is read as E^k_{v,r}, the adjacency operator A(E)).
- Output (`lmga_output`), Sec. 3.3: "we use a small network containing two convolutional layers for
  embedding features, and then concatenate them to obtain {E'_t}_{t=1}^{2n+1}". "refine" (default): the
  key node X^K_t through 2 convs (C -> C -> C), the 2n+1 results forming the output sequence; "concat":
  refine([F_t, X^K_t]) (2C -> C -> C); "residual": F_t + refine(X^K_t).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from megan_jax.models.layers import Conv, ConvSpec, lrelu


def eval_global_indices(num_frames: int, tau: int) -> np.ndarray:
  """The fixed evaluation-time pool: tau of `num_frames` candidates evenly spread, round(linspace)."""
  return np.round(np.linspace(0, num_frames - 1, tau)).astype(np.int32)


def sample_global_indices(rng: jax.Array, batch: int, num_frames: int, tau: int) -> jax.Array:
  """Training-time pools: the first tau entries of a random permutation of `num_frames`, per row. (B, tau)."""
  keys = jax.random.split(rng, batch)
  return jax.vmap(lambda k: jax.random.permutation(k, num_frames)[:tau])(keys).astype(jnp.int32)


def node_indices(rng: jax.Array | None, b: int, t: int, tau: int, pool: str) -> jax.Array:
  """Frame indices of every key frame's node set [key, g_1, ..., g_tau], (B, T, phi); rng None: eval."""
  keys = jnp.broadcast_to(jnp.arange(t)[None, :, None], (b, t, 1))
  if pool == "clip":
    glob = (sample_global_indices(rng, b, t, tau) if rng is not None
            else jnp.broadcast_to(jnp.asarray(eval_global_indices(t, tau)), (b, tau)))
    return jnp.concatenate([keys, jnp.broadcast_to(glob[:, None], (b, t, tau))], -1)
  others = jnp.asarray(np.array([[j for j in range(t) if j != i] for i in range(t)], np.int32))  # (T, T-1)
  if rng is not None:
    pick = sample_global_indices(rng, b * t, t - 1, tau).reshape(b, t, tau)
  else:
    pick = jnp.broadcast_to(jnp.asarray(eval_global_indices(t - 1, tau)), (b, t, tau))
  return jnp.concatenate([keys, jnp.take_along_axis(others[None], pick, axis=2)], -1)


class EdgeFunction(nn.Module):
  """f(|E_p - E_q|): 3x3 conv C->C, LeakyReLU, 3x3 conv C->1. (..., H, W, C) -> (..., H, W)."""
  spec: ConvSpec

  @nn.compact
  def __call__(self, diff: jax.Array) -> jax.Array:
    x = lrelu(Conv(self.spec.features, dtype=self.spec.dtype, name="conv1")(diff))
    return Conv(1, dtype=self.spec.dtype, name="conv2")(x)[..., 0]


def adjacency(f: EdgeFunction, x: jax.Array, self_loops: bool) -> jax.Array:
  """Row-softmax edge weights of the node sets x (B, T, phi, H, W, C) -> A (B, T, phi, phi, H, W)."""
  phi = x.shape[2]
  iu, ju = np.triu_indices(phi, k=1)
  logit = f(jnp.abs(x[:, :, iu] - x[:, :, ju]))  # (B, T, P, H, W), P = phi (phi - 1) / 2
  # (B, T, 1, H, W): f(0), the same for every node; masked out below without self-loops
  diag = f(jnp.zeros_like(x[:, :, :1])) if self_loops else jnp.zeros_like(logit[:, :, :1])
  pair = np.full((phi, phi), len(iu), np.int32)  # the diagonal reads slot P, f(0)
  pair[iu, ju] = pair[ju, iu] = np.arange(len(iu))
  logits = jnp.concatenate([logit, diag], 2)[:, :, pair].astype(jnp.float32)  # (B, T, phi, phi, H, W)
  if not self_loops:
    logits = jnp.where(np.eye(phi, dtype=bool)[:, :, None, None], -jnp.inf, logits)
  return jax.nn.softmax(logits, axis=3).astype(x.dtype)


class LMGA(nn.Module):
  """Eq. (12)-(13): graph aggregation of every frame feature with a global memory pool."""
  spec: ConvSpec
  tau: int
  layers: int
  pool: str         # "others" | "clip"
  node_embed: str   # "concat" | "separate"
  graph: str        # "per_layer" | "shared"
  self_loops: bool
  output: str       # "refine" | "concat" | "residual"

  @nn.compact
  def __call__(self, feats: jax.Array, *, train: bool) -> jax.Array:
    b, t, h, w, c = feats.shape  # (B, T, H, W, C), T = 2n+1
    tau = min(self.tau, t - 1 if self.pool == "others" else t)  # a short clip uses every frame it has
    conv = lambda feat, name: Conv(feat, dtype=self.spec.dtype, name=name)
    nodes = node_indices(self.make_rng("lmga") if train else None, b, t, tau, self.pool)  # (B, T, phi)
    gather = lambda x: jax.vmap(lambda xb, idx: xb[idx])(x, nodes)  # (B, T, ...) -> (B, T, phi, ...)

    # Eq. (12): M = N_g(L, G), the node embeddings of every key frame's graph.
    if self.node_embed == "concat":
      local = jnp.broadcast_to(feats[:, :, None], (b, t, tau + 1, h, w, c))
      e = lrelu(conv(c, "embed1")(jnp.concatenate([local, gather(feats)], -1)))
    else:
      e = lrelu(conv(c, "embed1")(feats))
    e = lrelu(conv(c, "embed2")(e))
    e = conv(c, "embed3")(e)
    x = e if self.node_embed == "concat" else gather(e)  # (B, T, phi, H, W, C)

    # Eq. (13): K graph-conv layers; graph G^k from X^{k-1} ("per_layer") or one graph ("shared").
    for k in range(1, self.layers + 1):
      if self.graph == "per_layer" or k == 1:
        f = EdgeFunction(self.spec, name=f"edges{k}" if self.graph == "per_layer" else "edges")
        adj = adjacency(f, x, self.self_loops)
      x = jnp.einsum("btpqhw,btqhwc->btphwc", adj, x)
      x = lrelu(conv(c, f"graph{k}")(x))
    key = x[:, :, 0]  # (B, T, H, W, C): the key frame's node
    refine = lambda y: conv(c, "refine2")(lrelu(conv(c, "refine1")(y)))  # the two-conv refinement
    if self.output == "refine":
      return refine(key)
    if self.output == "concat":
      return refine(jnp.concatenate([feats, key], -1))
    return feats + refine(key)
