r"""Stage 3 of the packaged `demo_small` (issue 29): stage 2 continued, the photographs also halved.

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb opencv-doc   # or: apt install opencv-doc
    python -m megan_jax.main --workdir=runs/pretrain_downscaled \
        --config=configs/pretrain_downscaled.py:opencv-doc/usr/share/doc/opencv-doc/examples/data \
        --config.data.extra="('/data/vimeo_septuplet_mini',)" [--config.pretrained=stage2.npz]

configs/pretrain_more.py's data and model, started from `config.pretrained` (a fresh optimiser, a
new cosine cycle 2e-4 -> 1e-6 over 5000 steps: 77 minutes on the 2-core CPU VM), with two
changes to the photographs:
- every photograph is used twice, as it is and downscaled by 2 (`data.stills_scales`,
  `data/stills.py`). Why: Carphone is 176x144, so its frames hold far more detail per pixel than
  a 512x512 photograph does; the embedded clips already train prescaled for that reason
  (configs/pretrain.py: Big Buck Bunny /4, Bikes /2);
- 6 more photographs of people and real scenes: opencv-doc's footballer, dog, indoor players,
  aerial view and desk (`MORE_OPENCV_STILLS`), and matplotlib's portrait of Grace Hopper. Why:
  Carphone shows a face, and the photographs of stage 2 are mostly texture.
The config argument is the opencv-doc folder, as for configs/pretrain_more.py. Carphone and the
opencv-doc videos stay out of training.
The packaged `demo_small` is this config's last step started from stage 2 (the export of
configs/pretrain_more.py; `--config.pretrained=stage2.npz` above); its default, `demo_small`,
continues today's packaged model instead. Measured on 2026-12-07 (docs/BENCHMARKS.md, "Round
five"): Carphone 27.59/0.8535 against 27.56/0.8523 for stage 2, and better on each held-out opencv
clip (vtest +0.19, tree +0.04, Megamind +0.24 dB). The half-size photographs helped the large
frames most, not Carphone.
"""

import importlib.util
import os

import ml_collections

_MORE = importlib.util.spec_from_file_location(
    "megan_pretrain_more_config",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain_more.py"))
pretrain_more = importlib.util.module_from_spec(_MORE)
_MORE.loader.exec_module(pretrain_more)

# opencv-doc: licensed as configs/pretrain_more.py's OPENCV_STILLS ("Apache-2.0 AND BSD-3-Clause").
MORE_OPENCV_STILLS = (
    "messi5.jpg",       # a footballer before a crowd, grass
    "chicky_512.png",   # a dog's face and fur
    "basketball1.png",  # two people indoors (grey; Middlebury flow)
    "aero1.jpg",        # a town and river from the air
    "stuff.jpg",        # a desk: pen, coin, lighter
)
# matplotlib's wheel (matplotlib is a dependency: plots.py), under matplotlib's licence (PSF-style,
# redistribution permitted): the US Navy's official portrait of Grace Hopper, a US government work.
MATPLOTLIB_STILL = ("mpl-data", "sample_data", "grace_hopper.jpg")


def matplotlib_still() -> str:
  """The path of matplotlib's bundled portrait, found without importing matplotlib."""
  spec = importlib.util.find_spec("matplotlib")
  return os.path.join(spec.submodule_search_locations[0], *MATPLOTLIB_STILL)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: the folder holding the opencv-doc photographs (default pretrain_more.OPENCV_DATA)."""
  folder = arg or pretrain_more.OPENCV_DATA
  c = pretrain_more.get_config(arg)
  c.data.stills = tuple(c.data.stills) + tuple(
      os.path.join(folder, f) for f in MORE_OPENCV_STILLS) + (matplotlib_still(),)
  c.data.stills_scales = (1, 2)
  c.optimizer.lr = 2e-4
  c.optimizer.min_lr = 1e-6
  c.optimizer.cycle_steps = 5000
  c.num_steps = 5000
  return c
