"""A params-only checkpoint (checkpointing.save_params) is the start of a training run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fakes
from megan_jax import checkpointing, train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_fakes.make_vimeo_tree(str(tmp_path_factory.mktemp("vimeo")))


def _initial_params(config):
  """The parameters train.py initialises a run of `config` with (toy model)."""
  keys = train.rng_streams(config.seed)
  x = jnp.zeros((1, config.data.num_input_frames, config.data.crop, config.data.crop, 3))
  return jax.jit(lambda: train_fakes.ToyModel().init(
      {"params": keys["params"], "lmga": keys["lmga_init"]}, x, train=False)["params"])()


def test_training_starts_from_the_params_with_fresh_optimiser_and_data(data_root, tmp_path):
  config = train_fakes.fast_config("tiny", data_root, num_steps=2)
  scratch, same, shifted = (str(tmp_path / d) for d in ("scratch", "same", "shifted"))
  train.train_and_evaluate(config, scratch, train_fakes.ToyModel())
  init = _initial_params(config)
  # Starting from a run's own initial parameters reproduces that run bit for bit: the optimiser
  # state, the step count and the data order are those of a fresh run.
  checkpointing.save_params(same, init)
  train.train_and_evaluate(config, same, train_fakes.ToyModel())
  got, step = checkpointing.restore_params(same)
  want, _ = checkpointing.restore_params(scratch)
  assert step == 2
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert checkpointing.make_manager(same, create=False).all_steps() == [0, 2]
  # Other start parameters are where training starts: two Adam steps move each by <= 2 lr.
  start = jax.tree.map(lambda p: p + 1.0, init)
  checkpointing.save_params(shifted, start)
  train.train_and_evaluate(config, shifted, train_fakes.ToyModel())
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                       checkpointing.restore_params(shifted)[0], start)
  assert 0 < max(jax.tree.leaves(moved)) <= 2 * config.optimizer.lr * 1.001


def test_start_params_of_another_model_and_a_used_workdir_are_clear_errors(data_root, tmp_path):
  config = train_fakes.fast_config("tiny", data_root, num_steps=1)
  workdir = str(tmp_path / "w")
  checkpointing.save_params(workdir, {"Conv_0": {"kernel": jnp.zeros((3, 3, 3, 5))}})
  with pytest.raises(ValueError,
                     match=r"\(step 0\): the checkpoint.s parameters do not fit config.model"):
    train.train_and_evaluate(config, workdir, train_fakes.ToyModel())
  with pytest.raises(ValueError, match="already holds checkpoints.*choose a new --workdir"):
    checkpointing.save_params(workdir, {"w": jnp.zeros(2)})
