r"""Stage 2 of the packaged `demo_small` (issue 29): stage 1 continued on photographs of texture.

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb opencv-doc   # or: apt install opencv-doc
    python -m megan_jax.main --workdir=runs/pretrain_more \
        --config=configs/pretrain_more.py:opencv-doc/usr/share/doc/opencv-doc/examples/data \
        --config.data.extra="('/data/vimeo_septuplet_mini',)" [--config.pretrained=stage1.npz]

configs/pretrain.py's data and model, started from `config.pretrained` (a fresh optimiser, a new
cosine cycle 3e-4 -> 1e-5 over 5000 steps: about 70 minutes on an idle 2-core CPU), with 13
colour photographs of Debian's `opencv-doc` samples beside scikit-image's 8: buildings, foliage,
fur, fabric, printed text, a circuit board, an aerial view (`OPENCV_STILLS`). Why: the stage-1
model gained least on fine texture (docs/BENCHMARKS.md, "Other held-out clips": tree +0.35 dB).
The config argument is the folder that holds them (default: where `apt install opencv-doc` puts
them). The opencv-doc *videos* (vtest, tree, Megamind) stay out of training: they are held-out
clips, scored like Carphone.
Its last step, started from the stage-1 model (the export of configs/pretrain.py's 6000 steps;
`--config.pretrained=stage1.npz` above), is stage 2 of the packaged `demo_small`, which
configs/pretrain_downscaled.py continues. Its default, `demo_small`, continues today's packaged
model instead: a further stage. Measured on 2026-12-07 (docs/BENCHMARKS.md, "Round four"):
Carphone 27.56/0.8523 against 27.20/0.8432 for the stage-1 model, and better on each held-out
opencv clip (tree by only 0.005 dB).
"""

import importlib.util
import os

import ml_collections

OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"
# Debian's opencv 4.6.0+dfsg-12 copyright file puts samples/data/* under its "Files: *" stanza:
# "License: Apache-2.0 AND BSD-3-Clause" (Intel Corporation, OpenCV Foundation and contributors).
# Debian's source package excludes lena (Files-Excluded) as non-free; none of these is excluded.
OPENCV_STILLS = (
    "building.jpg",      # an office block, windows
    "leuvenA.jpg",       # brick houses, cobbles
    "home.jpg",          # a palace facade against the sky
    "aero3.jpg",         # a town from the air
    "aloeL.jpg",         # a plant before patterned fabric (Middlebury stereo)
    "rubberwhale1.png",  # lattice, knit and fabric (Middlebury flow)
    "squirrel_cls.jpg",  # a squirrel among leaves
    "butterfly.jpg",     # a butterfly on a striped leaf
    "baboon.jpg",        # fur
    "fruits.jpg",        # fruit skin
    "graf1.png",         # graffiti on a wall
    "sudoku.png",        # printed text and grid lines
    "board.jpg",         # a circuit board
)

_PRETRAIN = importlib.util.spec_from_file_location(
    "megan_pretrain_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py"))
pretrain = importlib.util.module_from_spec(_PRETRAIN)
_PRETRAIN.loader.exec_module(pretrain)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: the folder holding OPENCV_STILLS (default OPENCV_DATA)."""
  folder = arg or OPENCV_DATA
  c = pretrain.get_config()
  c.pretrained = "demo_small"
  c.data.stills = tuple(c.data.stills) + tuple(os.path.join(folder, f) for f in OPENCV_STILLS)
  c.num_steps = 5000
  c.optimizer.lr = 3e-4
  c.optimizer.min_lr = 1e-5
  c.optimizer.cycle_steps = 5000
  c.log_every = 50
  c.checkpoint_every = 500
  return c
