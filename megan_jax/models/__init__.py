"""The MEGAN network and its configurations."""

import ml_collections

from megan_jax.models.configs import VARIANTS, ModelSpec, model_config
from megan_jax.models.megan import MEGAN


def build_model(config: ml_collections.ConfigDict) -> MEGAN:
  """The flax module for a model config (see `model_config`), holding it frozen as a `ModelSpec`."""
  return MEGAN(ModelSpec.from_config(config))


__all__ = ["MEGAN", "VARIANTS", "ModelSpec", "build_model", "model_config"]
