"""Custom kernels: modulated deformable convolution (DCNv2) and its bilinear-gather step."""

from megan_jax.kernels.deform_conv import deform_conv2d, deform_sample

__all__ = ["deform_conv2d", "deform_sample"]
