"""Long-range memory graph aggregation (LMGA), Sec. 3.3, Eq. (12)-(13).

Readings we chose where the paper is terse (also listed in docs/ARCHITECTURE.md):
- Local pool: the 2n+1 frame features of the clip. Global pool: tau of them. In training they are the
  first tau entries of a random permutation drawn per clip from the named RNG stream "lmga"; in
  evaluation the choice is fixed: round(linspace(0, 2n, tau)), for 2n+1 = 7 and tau = 4 the frames
  0, 2, 4, 6, i.e. exactly the observed (odd) input frames.
- Nodes: for each key frame t the node set is [F_t, G_1..G_tau] (phi = tau + 1 nodes), each embedded by
  N_g (3 conv layers, LeakyReLU between them). Since every node is one of the 2n+1 frame features,
  N_g runs once per frame and nodes are gathered from it.
- Edges, Eq. (12): A_pq = softmax_q( f(|E_p - E_q|) ), with f a conv stack (3x3 conv C->C, LeakyReLU,
  3x3 conv C->1) giving one edge weight per pair and pixel; softmax over the phi neighbours q of each p.
  f(|E_p - E_q|) is symmetric, so it is computed once per unordered frame pair.
- Aggregation, Eq. (13): K graph-conv layers X^{k+1}_p = LeakyReLU(W_k * sum_q A_pq X^k_q) with 3x3 convs
  W_k, then a 2-conv refinement of the key node; the output is F_t + refined key node, so the module starts
  close to the identity and the memory only adds what it finds useful.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from megan_jax.models.layers import Conv, Dtype, lrelu


def eval_global_indices(num_frames: int, tau: int) -> np.ndarray:
  """The fixed evaluation-time global pool: tau frames evenly spread over the clip."""
  return np.round(np.linspace(0, num_frames - 1, tau)).astype(np.int32)


def sample_global_indices(rng: jax.Array, batch: int, num_frames: int, tau: int) -> jax.Array:
  """Training-time global pools: the first tau entries of a random permutation per clip. (B, tau)."""
  keys = jax.random.split(rng, batch)
  return jax.vmap(lambda k: jax.random.permutation(k, num_frames)[:tau])(keys).astype(jnp.int32)


class LMGA(nn.Module):
  """Eq. (12)-(13): graph aggregation of every frame feature with a global memory pool."""
  features: int
  tau: int = 4
  layers: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: jax.Array, *, train: bool) -> jax.Array:
    b, t, h, w, c = feats.shape  # (B, T, H, W, C), T = 2n+1
    tau = min(self.tau, t)  # a clip shorter than tau frames uses all of them as its global pool
    conv = lambda feat, name: Conv(feat, dtype=self.dtype, name=name)

    # N_g: node embedding, once per frame.
    e = lrelu(conv(c, "embed1")(feats))
    e = lrelu(conv(c, "embed2")(e))
    e = conv(c, "embed3")(e)  # (B, T, H, W, C)

    if train:
      glob = sample_global_indices(self.make_rng("lmga"), b, t, tau)  # (B, tau)
    else:
      glob = jnp.broadcast_to(jnp.asarray(eval_global_indices(t, tau)), (b, tau))
    # Node sets: for key frame t, [t, g_1, ..., g_tau]. (B, T, phi) frame indices.
    nodes = jnp.concatenate([jnp.broadcast_to(jnp.arange(t)[None, :, None], (b, t, 1)),
                             jnp.broadcast_to(glob[:, None, :], (b, t, tau))], -1)

    # Eq. (12): edge logits for every unordered pair of frames, then gathered per node pair.
    iu, ju = np.triu_indices(t)
    diff = jnp.abs(e[:, iu] - e[:, ju])  # (B, P, H, W, C), P = T (T+1) / 2
    logit = lrelu(conv(c, "edge1")(diff))
    logit = conv(1, "edge2")(logit)[..., 0]  # (B, P, H, W)
    pair = np.zeros((t, t), np.int32)
    pair[iu, ju] = np.arange(len(iu))
    pair[ju, iu] = np.arange(len(iu))
    pair_idx = jnp.asarray(pair)[nodes[..., :, None], nodes[..., None, :]]  # (B, T, phi, phi)
    logits = jax.vmap(lambda lg, idx: lg[idx])(logit, pair_idx)  # (B, T, phi, phi, H, W)
    adj = jax.nn.softmax(logits.astype(jnp.float32), axis=3).astype(e.dtype)

    # Eq. (13): K graph-conv layers over the phi nodes of every key frame.
    x = jax.vmap(lambda ef, idx: ef[idx])(e, nodes)  # (B, T, phi, H, W, C)
    for k in range(self.layers):
      x = jnp.einsum("btpqhw,btqhwc->btphwc", adj, x)
      x = lrelu(conv(c, f"graph{k + 1}")(x))
    key = x[:, :, 0]  # (B, T, H, W, C): the key frame's node
    key = lrelu(conv(c, "refine1")(key))
    return feats + conv(c, "refine2")(key)
