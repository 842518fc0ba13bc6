"""megan-jax: MEGAN space-time video super-resolution in JAX/Flax."""

__version__ = "0.1.0"
