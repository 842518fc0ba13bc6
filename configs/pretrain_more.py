r"""Round three of the packaged `demo_small` (issue 29): continue it on photographs of texture.

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb opencv-doc   # or: apt install opencv-doc
    python -m megan_jax.main --workdir=runs/pretrain_more \
        --config=configs/pretrain_more.py:opencv-doc/usr/share/doc/opencv-doc/examples/data \
        --config.data.extra="('/data/vimeo_septuplet_mini',)"

configs/pretrain.py's data and model, started from the packaged `demo_small` (a fresh optimiser, a
new cosine cycle 3e-4 -> 1e-5 over 7000 steps: about 95 minutes on an idle 2-core CPU), with 13
colour photographs of Debian's `opencv-doc` samples beside scikit-image's 8: buildings, foliage,
fur, fabric, printed text, a circuit board, an aerial view (`OPENCV_STILLS`). Why: the packaged
model gains least on fine texture (docs/BENCHMARKS.md, "Other held-out clips": tree +0.35 dB).
The config argument is the folder that holds them (default: where `apt install opencv-doc` puts
them). The opencv-doc *videos* (vtest, tree, Megamind) stay out of training: they are held-out
clips, scored like Carphone. Measured on 2026-12-07 (docs/BENCHMARKS.md, "Round three"):
Carphone 27.59/0.8524, +0.39 dB over `demo_small`; better on vtest and Megamind, flat on tree
(-0.002 dB), so it was not shipped as `demo_small`.
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
  c.num_steps = 7000
  c.optimizer.lr = 3e-4
  c.optimizer.min_lr = 1e-5
  c.optimizer.cycle_steps = 7000
  c.log_every = 50
  c.checkpoint_every = 500
  return c
