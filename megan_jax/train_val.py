"""Validation during training: PSNR-Y/SSIM-Y on `config.val` every `config.eval_every` steps.

It scores through the eval code path (`evaluate.evaluate_sequences`), with the bicubic + blending
baseline's scores beside the model's (computed once) and side-by-side crops for TensorBoard.
"""

import numpy as np

from megan_jax import evaluate, predict
from megan_jax.data.pipeline import open_eval_dataset


class Validator:
  """Scores parameters on the first `config.val.max_clips` clips of `config.val`."""

  def __init__(self, config, model):
    self._model = model
    self._sequences = open_eval_dataset(config.val)[:config.val.get("max_clips")]
    self._num_input_frames = config.data.num_input_frames
    self._baseline = None

  def _scores(self, predict_fn) -> dict[str, float]:
    return evaluate.evaluate_sequences(predict_fn, self._sequences, progress=False, desc="val",
                                       num_input_frames=self._num_input_frames)["mean"]

  def __call__(self, params) -> tuple[dict[str, float], np.ndarray]:
    """({"val_<metric>", "val_baseline_<metric>"}, comparison crops uint8 (H, W, 3))."""
    if self._baseline is None:
      self._baseline = self._scores(evaluate.baseline_predict_fn)
    # predict fns of one model share their compilations
    predict_fn = predict.make_predict_fn(self._model, params)
    scores = {f"val_{k}": v for k, v in self._scores(predict_fn).items()}
    scores.update({f"val_baseline_{k}": v for k, v in self._baseline.items()})
    image = evaluate.comparison_image(
        self._sequences[0], {"model": predict_fn, evaluate.BASELINE: evaluate.baseline_predict_fn},
        num_input_frames=self._num_input_frames)
    return scores, image
