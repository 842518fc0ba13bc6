"""Non-local residual block (NLRB), Eq. (1)-(3) of MEGAN (after Wang et al., "Non-local Neural Networks").

    y_i = sum_j softmax_j( u(x_i)^T v(x_j) ) g(x_j)          Eq. (1)-(2): dot-product similarity of the
    z_i = W_z y_i + x_i                                     1x1 embeddings u, v, softmax over all j;
                                                            Eq. (3): 1x1 projection W_z and residual add.

The attention never materialises the (HW x HW) matrix on the default path: queries are processed in
chunks of `chunk` positions against all keys, and each chunk is rematerialised in the backward pass, so
memory is linear in the number of positions (a 180x144 frame runs on a laptop CPU). On GPU, `impl="cudnn"`
hands the same computation to cuDNN's fused flash attention through `jax.nn.dot_product_attention`.
There is no 1/sqrt(d) temperature: the paper's similarity is the plain dot product.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from megan_jax.models.layers import Conv, Dtype


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


class NonLocalResidualBlock(nn.Module):
  """NLRB, Eq. (1)-(3): non-local attention over all positions of one frame plus a residual."""
  features: int
  embed: int
  impl: str = "chunked"
  chunk: int = 1024
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape  # (B, H, W, C)
    u = Conv(self.embed, kernel=1, dtype=self.dtype, name="u")(x).reshape(b, h * w, self.embed)
    v = Conv(self.embed, kernel=1, dtype=self.dtype, name="v")(x).reshape(b, h * w, self.embed)
    g = Conv(self.embed, kernel=1, dtype=self.dtype, name="g")(x).reshape(b, h * w, self.embed)
    y = attention(u, v, g, impl=self.impl, chunk=self.chunk).reshape(b, h, w, self.embed)
    return x + Conv(self.features, kernel=1, dtype=self.dtype, name="w_z")(y)
