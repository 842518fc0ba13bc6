"""Spatial helpers for clips: modcrop, bicubic downscaling, the aligned LR/GT crop, augmentation.

All functions take (T, H, W, C) arrays (LR inputs and GT frames of one clip) and keep
LR pixel (y, x) aligned with GT pixels (scale*y .. scale*y + scale - 1, same for x).
"""

import numpy as np

from megan_jax.data.imresize import imresize_np
from megan_jax.data.sources import DataError


def modcrop(frames: np.ndarray, scale: int = 4) -> np.ndarray:
  """Crops (..., H, W, C) to H, W multiples of `scale` (keeping the top-left corner)."""
  h, w = frames.shape[-3], frames.shape[-2]
  return frames[..., : h - h % scale, : w - w % scale, :]


def random_crop(gt: np.ndarray, crop: int, scale: int, rng: np.random.Generator,
                lr: np.ndarray | None = None, where: str = "clip"):
  """A `crop` x `crop` LR patch of the inputs and the aligned (scale*crop)^2 GT patch.

  gt: (2n+1, H, W, C) uint8, the n+1 inputs being its even frames; lr: the pre-made
  (n+1, H/scale, W/scale, C) LR frames, or None to compute the LR patch with
  `downscale_crop` (equal to cropping the bicubic LR of the full frames).
  Returns (lr_patch (n+1, crop, crop, C), gt_patch (2n+1, scale*crop, scale*crop, C)).
  """
  big_h, big_w = gt.shape[1:3]
  h, w = big_h // scale, big_w // scale
  if big_h % scale or big_w % scale:
    raise DataError(f"{where}: frames are {big_w}x{big_h}, expected multiples of {scale}")
  if lr is not None and lr.shape[1:3] != (h, w):
    raise DataError(
        f"{where}: LR frames are {lr.shape[2]}x{lr.shape[1]}, expected the GT size "
        f"{big_w}x{big_h} / {scale} (width x height)")
  if h < crop or w < crop:
    raise DataError(f"{where}: LR frames are {w}x{h}, smaller than the {crop}x{crop} crop")
  y = int(rng.integers(0, h - crop + 1))
  x = int(rng.integers(0, w - crop + 1))
  g = crop * scale
  gt_patch = gt[:, scale * y:scale * y + g, scale * x:scale * x + g]
  if lr is None:
    return downscale_crop(gt[::2], y, x, crop, scale), gt_patch
  return lr[:, y:y + crop, x:x + crop], gt_patch


def downscale_crop(frames: np.ndarray, y: int, x: int, crop: int, scale: int) -> np.ndarray:
  """`downscale(frames)[:, y:y+crop, x:x+crop]` computed from a GT window only.

  Output pixel i of MATLAB's bicubic x1/scale reads input pixels within 2*scale of its
  centre scale*i + (scale-1)/2 (Keys' support [-2, 2], stretched by scale). So a GT
  window with a margin of 2*scale pixels around the crop gives the same LR pixels; where
  the margin would leave the image it is cut at the image border, whose symmetric
  reflection is then the same as MATLAB's. The result is bit-identical to downscaling
  the full frames and cropping (tested), at the cost of a 4-frame (4c+16)^2 resize.
  frames: (k, H, W, C) uint8 with H, W multiples of scale -> (k, crop, crop, C) uint8.
  """
  big_h, big_w = frames.shape[1:3]
  m = 2 * scale
  y0, y1 = max(scale * y - m, 0), min(scale * (y + crop) + m, big_h)
  x0, x1 = max(scale * x - m, 0), min(scale * (x + crop) + m, big_w)
  small = downscale(frames[:, y0:y1, x0:x1], scale)
  oy, ox = (scale * y - y0) // scale, (scale * x - x0) // scale
  return small[:, oy:oy + crop, ox:ox + crop]


def transform(frames: np.ndarray, hflip: bool, vflip: bool, transpose: bool,
              reverse: bool) -> np.ndarray:
  """One of the 8 dihedral transforms of the frames, optionally in reversed time order."""
  if hflip:
    frames = frames[:, :, ::-1]
  if vflip:
    frames = frames[:, ::-1]
  if transpose:
    frames = frames.swapaxes(1, 2)
  if reverse:
    frames = frames[::-1]
  return np.ascontiguousarray(frames)


def random_augment(lr: np.ndarray, gt: np.ndarray, rng: np.random.Generator):
  """Horizontal flip, vertical flip, 90-degree rotation (transpose) and temporal reversal,
  each with probability 1/2, applied identically to LR (T, h, w, C) and GT (T', H, W, C).

  Reversal keeps the LR inputs on the GT's even offsets, since both lists are reversed.
  """
  flags = tuple(bool(b) for b in rng.random(4) < 0.5)
  return transform(lr, *flags), transform(gt, *flags)


def downscale(frames: np.ndarray, scale: int = 4) -> np.ndarray:
  """MATLAB `imresize(frames, 1/scale, 'bicubic')` of uint8 frames, returned as uint8.

  Rounds half away from zero and saturates, as MATLAB does for uint8 images, so the
  result matches the pre-made LR PNGs of Zooming Slow-Mo (made by MATLAB).
  (..., H, W, C) -> (..., H/scale, W/scale, C).
  """
  small = imresize_np(frames, 1.0 / scale)
  return np.clip(np.floor(small + 0.5), 0, 255).astype(np.uint8)
