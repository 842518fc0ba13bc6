"""Non-local residual block (NLRB), Sec. 3.1, Eq. (1)-(3) of MEGAN (after Wang et al., "Non-local Neural
Networks", in the space-time form of PFNL: Yi et al., "Progressive Fusion Video Super-Resolution Network via
Exploiting Non-Local Spatio-Temporal Correlations", ICCV 2019).

    y_i = sum_j softmax_j( u(x_i)^T v(x_j) ) g(x_j)          Eq. (1)-(2): dot-product similarity of the
    z_i = W_z y_i + x_i                                     1x1 embeddings u, v, softmax over all j;
                                                            Eq. (3): 1x1 projection W_z and residual add.

Scope (`model.nlrb_scope`). MEGAN's abstract: the block "enables each channel-wise feature to attend global
spatial hierarchical features", and the module is the one MEGAN cites from PFNL, which attends over the whole
clip at once: its official code (psychopa4/PFNL, model/pfnl.py) concatenates the T frames on channels,
rearranges them with `tf.space_to_depth(inp0, 2)`, runs the non-local block over the (H/2)(W/2) positions
and goes back with `tf.depth_to_space(inp1, 2)`. "spacetime" (the default) does the same on the features
(B, T, H, W, C): a position i is an r x r cell of every frame, T r^2 C channels, so each position attends to
the whole clip and the logits shrink from T (HW)^2 per-frame to (HW / r^2)^2. "frame" folds T into the batch
instead: with r = 1 it is the per-frame block of Wang et al. The block size r is `model.nlrb_block`
(2 in PFNL).

The attention never materialises the (HW x HW) matrix on the default path: queries are processed in
chunks of `chunk` positions against all keys, and each chunk is rematerialised in the backward pass, so
memory is linear in the number of positions (a 180x144 frame runs on a laptop CPU). On GPU, `impl="cudnn"`
hands the same computation to cuDNN's fused flash attention through `jax.nn.dot_product_attention`.
There is no 1/sqrt(d) temperature: the paper's similarity is the plain dot product, Eq. (2)
f(x_i, x_j) = (W_u x_i)^T W_v x_j, normalised by the softmax that Eq. (3) writes (Eq. (1)'s division by
sum_j f(x_i, x_j) with f = exp of that dot product); u, v, g, W_z are 1x1 convs (Eq. (2)-(3): "a linear
embedding for g: g(x_j) = W_g x_j"). Their width (`model.nlrb_embed`) is not in the paper.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from megan_jax.models.layers import Conv, ConvSpec


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, chunk: int) -> jax.Array:
  """softmax(q k^T) v for (B, N, D) inputs without the (N x N) matrix: O(chunk * N) live memory."""
  b, n, d = q.shape  # (B, N, D)
  chunk = min(chunk, n)
  pad = (-n) % chunk
  qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0))).reshape(b, (n + pad) // chunk, chunk, d)

  @jax.checkpoint
  def one_chunk(qc):  # (B, chunk, D)
    logits = jnp.einsum("bqd,bkd->bqk", qc, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bqk,bkd->bqd", weights, v, preferred_element_type=jnp.float32).astype(v.dtype)

  out = jax.lax.map(one_chunk, qp.transpose(1, 0, 2, 3))  # (N / chunk, B, chunk, Dv)
  return out.transpose(1, 0, 2, 3).reshape(b, n + pad, -1)[:, :n]


def full_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """The naive (N x N) form; the reference for tests and the fastest choice on tiny inputs."""
  logits = jnp.einsum("bqd,bkd->bqk", q, k, preferred_element_type=jnp.float32)
  return jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(logits, -1).astype(v.dtype), v)


def attention(q, k, v, *, impl: str, chunk: int):
  """Dispatches softmax(q k^T) v over the NLRB's attention implementations."""
  if impl == "chunked":
    return chunked_attention(q, k, v, chunk)
  if impl == "full":
    return full_attention(q, k, v)
  if impl == "cudnn" and (q.dtype not in (jnp.bfloat16, jnp.float16) or q.shape[-1] % 8):
    # cuDNN's fused attention has no float32 kernel and wants a head width that is a multiple of 8
    # (jax/_src/cudnn/fused_attention_stablehlo.py, `check_layout` / `check_is_flash_attention`).
    raise ValueError(f"model.attention_impl='cudnn' needs model.dtype='bfloat16' and "
                     f"model.nlrb_embed a multiple of 8; got {q.dtype} and {q.shape[-1]}. "
                     f"Use attention_impl='xla' or 'chunked' otherwise")
  if impl in ("xla", "cudnn"):
    # dot_product_attention wants (B, N, heads, D); the value and key widths must match, which holds
    # here since u, v and g share `embed` channels.
    out = jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None], scale=1.0,
                                       implementation=impl)
    return out[:, :, 0]
  raise ValueError(f"model.attention_impl={impl!r}; expected 'chunked', 'full', 'xla' or 'cudnn'")


def space_to_depth(x: jax.Array, r: int) -> jax.Array:
  """(N, H, W, D) -> (N, H/r, W/r, r r D) in TensorFlow's order: channel (dy r + dx) D + d."""
  n, h, w, d = x.shape
  x = x.reshape(n, h // r, r, w // r, r, d).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // r, w // r, r * r * d)


def depth_to_space(x: jax.Array, r: int) -> jax.Array:
  """The inverse of `space_to_depth`: (N, H/r, W/r, r r D) -> (N, H, W, D)."""
  n, hh, ww, rrd = x.shape
  d = rrd // (r * r)
  x = x.reshape(n, hh, ww, r, r, d).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, hh * r, ww * r, d)


class NonLocalResidualBlock(nn.Module):
  """NLRB, Eq. (1)-(3), over a clip (B, T, H, W, C): attention over the space-time positions of `span`."""
  spec: ConvSpec
  embed: int          # channels of the u, v, g embeddings
  span: str           # "spacetime": frames folded into the channels (PFNL) | "frame": into the batch
  block: int          # space-to-depth block size r
  impl: str = "chunked"
  chunk: int = 1024

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape  # (B, T, H, W, C)
    r, dtype = self.block, self.spec.dtype
    if self.span == "spacetime":
      folded = x.transpose(0, 2, 3, 1, 4).reshape(b, h, w, t * c)  # frames concatenated on channels
    else:
      folded = x.reshape(b * t, h, w, c)
    tokens = space_to_depth(folded, r)  # (N, H/r, W/r, D): N = B, D = r r T C  |  N = B T, D = r r C
    n, hh, ww, d = tokens.shape
    embed = lambda name: Conv(self.embed, kernel=1, dtype=dtype, name=name)(tokens).reshape(
        n, hh * ww, self.embed)
    y = attention(embed("u"), embed("v"), embed("g"), impl=self.impl, chunk=self.chunk)
    z = Conv(d, kernel=1, dtype=dtype, name="w_z")(y.reshape(n, hh, ww, self.embed))  # Eq. (3)
    z = depth_to_space(z, r)
    if self.span == "spacetime":
      z = z.reshape(b, h, w, t, c).transpose(0, 3, 1, 2, 4)
    return x + z.reshape(x.shape)
