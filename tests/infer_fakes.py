"""Fakes for the infer tests: videos and frame folders written with PyAV and PIL, a numpy predict fn
and a predict fn that sends the process a signal, as a user's Ctrl-C or a scheduler's SIGTERM would.

Run as a script, it is `python -m megan_jax.main` whose predict fns (infer's and eval's) are
`nearest_predict` sending SIGNAL (an environment variable, default SIGINT) on their second call:
    python tests/infer_fakes.py --mode=infer|eval --config=configs/vimeo.py:tiny --workdir=...
"""

import os
import signal
import sys

import av
import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_video(path, frames, fps):
  """Writes uint8 (T, H, W, 3) frames with PyAV (independently of megan_jax.infer)."""
  codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
  with av.open(path, mode="w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode(None))


def read_video(path):
  """(average frame rate, [uint8 (H, W, 3) frames]) of a video, read with PyAV."""
  with av.open(path) as container:
    stream = container.streams.video[0]
    rate = stream.average_rate
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
  return rate, frames


def write_frames(folder, frames, name="f{}.png"):
  """Writes uint8 (T, H, W, 3) frames as PNGs folder/f0.png, f1.png, ...; returns the folder."""
  os.makedirs(folder, exist_ok=True)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(folder, name.format(i)))
  return str(folder)


def read_frames(folder):
  """The uint8 frames of the PNGs in `folder`, by name."""
  names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
  return [np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names]


def nearest_predict(lr):
  """A stand-in for MEGAN: (1, n+1, h, w, 3) -> (1, 2n+1, 4h, 4w, 3), each input frame repeated
  4x4 at the input times and the mean of its two neighbours between them."""
  up = np.repeat(np.repeat(np.asarray(lr, np.float32), 4, axis=2), 4, axis=3)
  out = np.empty((up.shape[0], 2 * up.shape[1] - 1) + up.shape[2:], np.float32)
  out[:, 0::2] = up
  out[:, 1::2] = (up[:, :-1] + up[:, 1:]) / 2
  return out


def signalling(signum, at_call=2, predict_fn=nearest_predict):
  """`predict_fn` that sends this process `signum` on its `at_call`-th call, then goes on."""
  calls = []

  def fn(lr):
    calls.append(1)
    if len(calls) == at_call:
      os.kill(os.getpid(), signum)
    return predict_fn(lr)

  return fn


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  import functools  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  from megan_jax import evaluate, infer, main  # pylint: disable=g-import-not-at-top
  signum = getattr(signal, os.environ.get("SIGNAL", "SIGINT"))
  infer.infer = functools.partial(infer.infer, predict_fn=signalling(signum))
  evaluate.restore_predict_fn = lambda *args, **kwargs: (signalling(signum), 1)
  app.run(main.main, flags_parser=main._parse)  # pylint: disable=protected-access
