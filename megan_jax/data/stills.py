"""Training clips from photographs a user has: scikit-image's bundled photographs, or image files, moved.

scikit-image ships a few photographs inside its wheel (`skimage/data/*`, no download); we find
them with `importlib.util.find_spec` without importing skimage. An entry of `data.stills` is
either one of their names (`STILLS`) or the path of an image file a user has (any format PIL
reads; configs/pretrain_more.py uses the photographs of Debian's opencv-doc). Each becomes one clip per motion
kind of `embedded.MOTIONS` (pan, zoom, rotate), rendered by `embedded.synthetic_clip` from the
photograph at its own resolution: the photograph is the GT, the pipeline makes the LR as for any
clip. Grey photographs are repeated over the three channels.
"""

import functools
import importlib.util
import os

import numpy as np
from PIL import Image

from megan_jax.data.embedded import MOTIONS, shrink, synthetic_clip
from megan_jax.data.sources import ArraySequence, DataError

# name: (file in skimage/data, licence as scikit-image's docstrings state it)
STILLS = {
    "astronaut": ("astronaut.png", "public domain (NASA)"),
    "chelsea": ("chelsea.png", "CC0 (Stefan van der Walt)"),
    "coffee": ("coffee.png", "CC0 (Rachel Michetti)"),
    "rocket": ("rocket.jpg", "public domain (SpaceX)"),
    "camera": ("camera.png", "CC0 (Lav Varshney)"),
    "brick": ("brick.png", "CC0 (CC0Textures)"),
    "grass": ("grass.png", "CC0 (DeviantArt, linolafett)"),
    "gravel": ("gravel.png", "CC0 (CC0Textures)"),
}
VIEW = 0.8  # each frame shows this fraction of the photograph's height and width: a 9-degree
            # rotation or a 1.2x zoom over 13 frames stays inside it (no reflected borders)


def still_path(name: str) -> str:
  """The file of the bundled photograph `name` (a key of `STILLS`), or `name` itself when it is
  the path of an existing file."""
  if name not in STILLS:
    if os.path.isfile(name):
      return name
    raise DataError(f"config.data.stills: {name!r} unknown, expected names in {list(STILLS)} "
                    "or the path of an image file")
  spec = importlib.util.find_spec("skimage")
  if spec is None or not spec.submodule_search_locations:
    raise DataError("config.data.stills needs scikit-image's photographs: "
                    "`pip install scikit-image`, or set --config.data.stills=()")
  path = os.path.join(spec.submodule_search_locations[0], "data", STILLS[name][0])
  if not os.path.isfile(path):
    raise DataError(f"{path}: photograph not found in the scikit-image package")
  return path


def still_name(name: str) -> str:
  """How clips name the photograph: the bundled name, or the file name without its extension."""
  return name if name in STILLS else os.path.splitext(os.path.basename(name))[0]


def load_still(name: str) -> np.ndarray:
  """The photograph as uint8 (H, W, 3)."""
  path = still_path(name)
  try:
    return np.asarray(Image.open(path).convert("RGB"))
  except (OSError, ValueError) as err:
    raise DataError(f"config.data.stills: {path}: not an image PIL can read ({err})") from err


@functools.lru_cache(maxsize=4)
def still_clips(names: tuple, num_frames: int = 13, scales: tuple = (1,)) -> list:
  """One synthetic clip per (photograph, scale, motion kind): uint8 frames (num_frames, h, w, 3),
  with (h, w) = VIEW x the size of the photograph downscaled by the scale (`embedded.shrink`, as
  `data.prescale` does to video), rounded down to multiples of 4. Scale 1 is the photograph itself;
  clips at scale s > 1 are named `still_<name>_x<s>_<kind>`. Why downscale: a photograph at full
  resolution has less detail per pixel than small video (Carphone's 176x144), and the embedded
  clips train prescaled for the same reason (configs/pretrain.py)."""
  clips = []
  for name in names:
    photograph = load_still(name)
    for scale in scales:
      image = shrink(photograph, int(scale))
      size = tuple(int(VIEW * s) // 4 * 4 for s in image.shape[:2])
      label = still_name(name) if scale == 1 else f"{still_name(name)}_x{scale}"
      for kind in MOTIONS:
        frames = synthetic_clip(kind, num_frames, size, image=image).frames
        clips.append(ArraySequence(f"still_{label}_{kind}", frames))
  return clips
