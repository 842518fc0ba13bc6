"""Inference: a video (or frame folder) of any length and size -> 4x the resolution, 2x the frame rate.

Every source frame is an input. Windows of n+1 = 4 consecutive source frames give 2n+1 = 7 output
frames (the 4 inputs super-resolved and the 3 frames between them synthesised, Sec. 3); windows
overlap by one source frame and the last window ends at the final frame, and each output frame is
written once (from the first window that produces it), so N source frames give 2N - 1 output
frames. Frame sizes are padded to a multiple of 4 and cropped back, optionally processed in
overlapping spatial tiles (`predict`).

Usage (the architecture comes from the config file, the weights from the workdir's checkpoint, so
pass the config used for training):

    python -m megan_jax.main --mode=infer --config=configs/<train config>.py --workdir=<run> \\
        --config.infer.input=in.mp4 --config.infer.output=out.mp4

config.infer (the fields configs/vimeo.py declares): input (video file or frame folder, required),
output (a .mp4/.mkv/.mov/.avi file, or any other path = a folder of PNG frames; default
`workdir/infer/<name>_x4_2x.mp4`), step (checkpoint, default latest), tile and tile_overlap (LR
pixels), dtype, fps (source frame rate, overrides the video's; default 30 for frame folders),
progress (bool).
"""

import fractions
import os

import av
import numpy as np

from megan_jax import metrics, paths, report
from megan_jax.data.sources import (VIDEO_EXTENSIONS, DataError, FrameFolderSequence,
                                    VideoSequence)
from megan_jax.predict import restore_predict_fn
from megan_jax.progress import bar as progress_bar

OUTPUT_VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi")
DEFAULT_FOLDER_FPS = 30
_CODECS = ("libx264", "libopenh264", "mpeg4")  # first one this PyAV/FFmpeg build can encode


def infer_windows(num_frames: int, num_input_frames: int = 4) -> list[tuple[tuple, int, int]]:
  """The windows of an N-frame source: (input_indices, keep_from, keep_to) per window.

  A window of inputs s..s+n produces outputs 2s..2s+2n; the kept slice [keep_from, keep_to) of
  its 2n+1 outputs are the frames no earlier window produced. Sources shorter than one window
  repeat their last frame and keep only their 2N - 1 outputs.
  """
  n = num_input_frames - 1
  if num_frames < 1:
    raise DataError("infer: the source has no frames")
  if num_frames <= n:
    return [(tuple(min(k, num_frames - 1) for k in range(n + 1)), 0, 2 * num_frames - 1)]
  starts = list(range(0, num_frames - n, n))
  if starts[-1] + n < num_frames - 1:
    starts.append(num_frames - 1 - n)
  plan, emitted = [], 0  # emitted: number of output frames already produced
  for s in starts:
    plan.append((tuple(range(s, s + n + 1)), emitted - 2 * s, 2 * n + 1))
    emitted = 2 * (s + n) + 1
  return plan


def upscale_frames(predict_fn, sequence, *, num_input_frames: int = 4, progress: bool = True):
  """Yields the 2N - 1 output frames of `sequence` in order, uint8 (4H, 4W, 3).

  The progress bar starts after the first window, which compiles: its rate and ETA count from there.
  """
  plan = infer_windows(sequence.num_frames, num_input_frames)
  bar = None
  try:
    for inputs, lo, hi in plan:
      lr = sequence.read(inputs).astype(np.float32) / np.float32(255)  # (n+1, H, W, 3)
      out = np.asarray(predict_fn(lr[None]))[0]  # (2n+1, 4H, 4W, 3)
      for frame in out[lo:hi]:
        yield metrics.to_uint8(frame)
      if bar is None:
        bar = progress_bar(2 * sequence.num_frames - 1, f"infer {sequence.name}", unit="frame",
                           initial=hi - lo, shown=progress)
      else:
        bar.update(hi - lo)
  finally:
    if bar is not None:
      bar.close()


def _codec() -> str:
  for name in _CODECS:
    try:
      av.codec.Codec(name, "w")
      return name
    except (av.FFmpegError, ValueError):
      continue
  raise RuntimeError(f"this PyAV build can encode none of {_CODECS}; write PNG frames instead")


def write_video(frames, path: str, rate: fractions.Fraction) -> int:
  """Encodes uint8 (H, W, 3) frames as H.264 (MPEG-4 part 2 without libx264) at `rate` fps."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  count, codec = 0, _codec()
  with av.open(path, mode="w") as container:
    stream = None
    for frame in frames:
      if stream is None:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frame.shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
          stream.bit_rate = max(2_000_000, int(frame.shape[0] * frame.shape[1] * float(rate)))
        else:
          stream.options = {"crf": "17"}
      video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
      container.mux(stream.encode(video_frame))
      count += 1
    if stream is not None:
      container.mux(stream.encode(None))
  return count


def write_pngs(frames, folder: str) -> int:
  """Writes uint8 (H, W, 3) frames as folder/000000.png, 000001.png, ..."""
  count = 0
  for i, frame in enumerate(frames):
    report.save_png(os.path.join(folder, f"{i:06d}.png"), frame)
    count += 1
  return count


def open_source(path: str, fps=None):
  """(sequence, source frame rate as a Fraction) of a video file or a folder of frames."""
  if not path:
    raise ValueError("config.infer.input is not set: give a video file or a folder of frames")
  if os.path.isdir(path):
    return FrameFolderSequence(path), fractions.Fraction(fps or DEFAULT_FOLDER_FPS)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.infer.input: {path} does not exist")
  if not path.lower().endswith(VIDEO_EXTENSIONS):
    raise DataError(f"config.infer.input: {path} is not a video ({VIDEO_EXTENSIONS}) or a folder")
  sequence = VideoSequence(path)
  if fps:
    return sequence, fractions.Fraction(fps)
  with av.open(path) as container:
    rate = container.streams.video[0].average_rate
  if not rate:
    raise DataError(f"{path}: unknown frame rate; set config.infer.fps")
  return sequence, fractions.Fraction(rate)


def infer(config, workdir: str) -> str:
  """Upscales `config.infer.input` with the checkpoint in `workdir`, prints what it wrote and
  returns the output path."""
  ic = config.infer
  sequence, rate = open_source(ic.input, ic.fps)
  output = ic.output or os.path.join(workdir, "infer", f"{sequence.name}_x4_2x.mp4")
  is_video = output.lower().endswith(OUTPUT_VIDEO_EXTENSIONS)
  if not is_video and os.path.isfile(output):
    raise ValueError(f"config.infer.output: {output} is a file; give a video path "
                     f"{OUTPUT_VIDEO_EXTENSIONS} or a folder for PNG frames")
  (paths.writable_file if is_video else paths.writable_dir)(output, "config.infer.output")
  predict_fn, _ = restore_predict_fn(config, workdir, step=ic.step, tile=ic.tile,
                                     tile_overlap=ic.tile_overlap, dtype=ic.dtype)
  frames = upscale_frames(predict_fn, sequence, num_input_frames=config.data.num_input_frames,
                          progress=ic.progress)
  if is_video:
    count = write_video(frames, output, 2 * rate)
    what = f"{count} frames at {float(2 * rate):.4g} fps"
  else:
    count = write_pngs(frames, output)
    what = f"{count} PNG frames"
  h, w = sequence.read([0]).shape[1:3]
  print(report.wrote_lines([(output, f"{what}, {4 * w}x{4 * h}, from {sequence.num_frames} "
                                     f"frames of {w}x{h}")]), flush=True)
  return output
