"""Training loss."""

import jax
import jax.numpy as jnp


def charbonnier(pred: jax.Array, target: jax.Array, eps: float = 1e-3) -> jax.Array:
  """Charbonnier penalty mean(sqrt((pred - target)^2 + eps^2)), the paper's training loss.

  A differentiable L1: pred, target (B, 2n+1, 4H, 4W, 3) in [0, 1]; the mean runs over every
  pixel, frame and clip (ZSM sums instead; with Adam only the effective eps differs).
  """
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.mean(jnp.sqrt(diff * diff + eps * eps))
