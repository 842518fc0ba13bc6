"""Inference: a video (or frame folder) of any length and size -> 4x the resolution, 2x the frame rate.

Every source frame is an input. Windows of n+1 = 4 consecutive source frames give 2n+1 = 7 output
frames (the 4 inputs super-resolved and the 3 frames between them synthesised, Sec. 3); windows
overlap by one source frame and the last window ends at the final frame, and each output frame is
written once (from the first window that produces it), so N source frames at r fps give 2N - 1
output frames at 2r fps: (2N - 1) / 2r seconds, half a source frame shorter than the source's N / r
(nothing is synthesised after the last frame). With `time="1x"` only the N frames at the input
times are kept: N frames at r fps, the source's duration (super-resolution only). Frame sizes are
padded to a multiple of 4 and cropped back, optionally processed in overlapping spatial tiles
(`predict`).

Usage (the architecture comes from the config file, the weights from the workdir's checkpoint, so
pass the config used for training):

    python -m megan_jax.main --mode=infer --config=configs/<train config>.py --workdir=<run> \\
        --config.infer.input=in.mp4 --config.infer.output=out.mp4

config.infer (the fields configs/vimeo.py declares): input (video file or frame folder, required),
output (a .mp4/.mkv/.mov/.avi file, or a folder of PNG frames: an existing folder or a name without
an extension; default `workdir/infer/<name>_x4_<time>.mp4`), overwrite (replace an existing output
file, or the image files of a non-empty output folder; the input is never overwritten), time ("2x"
or "1x"), step (checkpoint, default latest), tile and tile_overlap (LR pixels), dtype, fps (source
frame rate, overrides the video's; default 30 for frame folders), progress (bool). `preflight`
checks all of it before anything is written; outputs are written under a temporary name
(`paths.staged`) and appear under their own name only when complete.
"""

import dataclasses
import fractions
import math
import os

import av
import numpy as np

from megan_jax import metrics, paths, report
from megan_jax.data.sources import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, DataError,
                                    FrameFolderSequence, Sequence, VideoSequence)
from megan_jax.predict import restore_predict_fn
from megan_jax.stop_signals import stop_on_signals
from megan_jax.progress import bar as progress_bar, note

OUTPUT_VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi")
DEFAULT_FOLDER_FPS = 30
_CODECS = ("libx264", "libopenh264", "mpeg4")  # first one this PyAV/FFmpeg build can encode
TIMES = {"2x": "twice the frame rate, MEGAN's output", "1x": "the frames at the input times only"}


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


def input_time_frames(num_input_frames: int = 4) -> tuple[int, ...]:
  """The outputs of a window at its input times: 0, 2, ..., 2n (time="1x" keeps only these)."""
  return tuple(range(0, 2 * num_input_frames - 1, 2))


def upscale_frames(predict_fn, sequence, *, num_input_frames: int = 4, progress: bool = True,
                   time: str = "2x"):
  """Yields the 2N - 1 output frames of `sequence` in order, uint8 (4H, 4W, 3); with time="1x"
  only the N of them at the input times (output frames 0, 2, ..., 2N - 2).

  `predict_fn` gives a window's 2n+1 outputs, or with time="1x" either those or only the n+1 at
  the input times (`input_time_frames`: a predict fn made with `frames=` skips the others' work).

  The progress bar starts after the first window, which compiles: its rate and ETA count from there.
  """
  plan = infer_windows(sequence.num_frames, num_input_frames)
  step = 2 if time == "1x" else 1
  bar = None
  try:
    for inputs, lo, hi in plan:
      lr = sequence.read(inputs).astype(np.float32) / np.float32(255)  # (n+1, H, W, 3)
      out = np.asarray(predict_fn(lr[None]))[0]  # (2n+1, 4H, 4W, 3), or (n+1, ...) at 1x
      first = lo + lo % step  # the first kept frame at an input time (2 * inputs[0] is even)
      kept = (out[first // 2:(hi + 1) // 2] if len(out) == len(inputs) and step == 2
              else out[first:hi:step])  # output k at an input time is frame k // 2 of n+1
      for frame in kept:
        yield metrics.to_uint8(frame)
      done = len(range(first, hi, step))
      if bar is None:
        bar = progress_bar(len(range(0, 2 * sequence.num_frames - 1, step)),
                           f"infer {sequence.name}", unit="frame", initial=done, shown=progress)
      else:
        bar.update(done)
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
  try:
    sequence = VideoSequence(path)
  except DataError as e:
    if not isinstance(e.__cause__, av.FFmpegError):
      raise
    raise DataError(f"config.infer.input: {path} is not a video PyAV can read "
                    f"({e.__cause__.strerror or 'FFmpeg cannot open it'}); give a video file that "
                    f"FFmpeg decodes or a folder of frames") from e
  if fps:
    return sequence, fractions.Fraction(fps)
  with av.open(path) as container:
    rate = container.streams.video[0].average_rate
  if not rate:
    raise DataError(f"{path}: unknown frame rate; set config.infer.fps")
  return sequence, fractions.Fraction(rate)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `infer` reads and writes, as checked by `preflight`."""
  sequence: Sequence
  rate: fractions.Fraction  # of the source, frames per second
  output: str               # absolute path: a video file, or a folder for PNG frames
  is_video: bool
  time: str                 # a key of TIMES
  made_folder: bool = False  # the PNG folder did not exist before `preflight` made it


def _check_fields(ic) -> None:
  if ic.time not in TIMES:
    raise ValueError(f"config.infer.time: {ic.time!r} is not one of "
                     + ", ".join(f"{k!r} ({v})" for k, v in TIMES.items()))
  if ic.fps is not None and not (math.isfinite(ic.fps) and ic.fps > 0):
    raise ValueError(f"config.infer.fps: {ic.fps} is not a frame rate; give a positive number of "
                     f"frames per second, or None for the video's own ({DEFAULT_FOLDER_FPS} for a "
                     f"folder of frames)")


def _is_video(output: str) -> bool:
  """Whether `output` names a video file (by its extension) rather than a folder of PNG frames."""
  ext = os.path.splitext(output.rstrip(os.sep))[1].lower()
  if ext in OUTPUT_VIDEO_EXTENSIONS:
    return True
  if os.path.isdir(output):
    return False
  if ext:
    raise ValueError(f"config.infer.output: {output}: {ext} is not a container this writes; give a "
                     f"video file ending in {', '.join(OUTPUT_VIDEO_EXTENSIONS)}, or a folder (a "
                     f"name without an extension) for PNG frames")
  if os.path.lexists(output):
    raise ValueError(f"config.infer.output: {output} is a file; give a video path "
                     f"{OUTPUT_VIDEO_EXTENSIONS} or a folder for PNG frames")
  return False


def frames_temp(output: str) -> str:
  """The folder a frame-folder output is written in before its frames are moved into place."""
  return os.path.join(output, f".partial-{os.getpid()}")


def _check_output(output: str, is_video: bool, ic) -> None:
  """Refuses an output that is the input, or that exists, unless config.infer.overwrite."""
  if paths.same_path(output, ic.input):
    raise ValueError(f"config.infer.output: {output} is config.infer.input: upscaling into it "
                     f"would overwrite the source; choose another path")
  if ic.overwrite or not os.path.lexists(output):
    return
  advice = "choose another path or set --config.infer.overwrite=True to replace"
  if is_video and not os.path.isdir(output):
    raise FileExistsError(f"config.infer.output: {output} already exists; {advice} it")
  entries = os.listdir(output) if os.path.isdir(output) else []
  # A killed run's temporary folder in it is no user's: `_write` removes it (paths.staged).
  stale = paths.stale_temporaries(frames_temp(output))
  entries = [e for e in entries if os.path.join(output, e) not in stale]
  frames = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)]
  if entries:
    raise FileExistsError(f"config.infer.output: the folder {output} already holds {len(entries)} "
                          f"entries ({len(frames)} of them images); {advice} its images")


def preflight(config, workdir: str) -> Plan:
  """Checks config.infer before anything is written (main.py calls it before the workdir is
  touched): the fields, the input (readable), the output (a supported kind, not the input, not
  existing unless config.infer.overwrite, writable). Raises ValueError or OSError naming the field."""
  ic = config.infer
  _check_fields(ic)
  with stop_on_signals("--mode=infer", "nothing was written; rerun the same command to start"):
    sequence, rate = open_source(ic.input, ic.fps)  # counts a video's frames: seconds for hours
  output = os.path.abspath(ic.output or os.path.join(workdir, "infer",
                                                     f"{sequence.name}_x4_{ic.time}.mp4"))
  is_video = _is_video(output)
  _check_output(output, is_video, ic)
  made_folder = not is_video and not os.path.exists(output)
  (paths.writable_file if is_video else paths.writable_dir)(output, "config.infer.output")
  return Plan(sequence, rate, output, is_video, ic.time, made_folder)


def _replace_frames(temp: str, folder: str) -> None:
  """Moves the frames written to `temp` (a folder inside `folder`) into `folder`, after removing
  the images `folder` held (so that it holds the new frames only)."""
  for name in os.listdir(folder):
    path = os.path.join(folder, name)
    if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path):
      os.remove(path)
  for name in os.listdir(temp):
    os.replace(os.path.join(temp, name), os.path.join(folder, name))
  os.rmdir(temp)


def _seconds(count: int, rate: fractions.Fraction, kind: str = "") -> str:
  return f"{count} {kind}frames at {float(rate):.4g} fps = {float(count / rate):.4g} s"


def _write(plan: Plan, frames) -> str:
  """Writes `frames` to plan.output via a temporary name; returns what was written, in words."""
  rate = 2 * plan.rate if plan.time == "2x" else plan.rate
  if plan.is_video:
    with paths.staged(plan.output, note=note) as temp:
      count = write_video(frames, temp, rate)
    kind = ""
  else:
    temp = frames_temp(plan.output)
    with paths.staged(plan.output, temp, finish=_replace_frames, note=note):
      count = write_pngs(frames, temp)
    kind = "PNG "
  n = plan.sequence.num_frames
  h, w = plan.sequence.read([0]).shape[1:3]
  how = (f"2x the frame rate: {n - 1} frames synthesised between the inputs" if plan.time == "2x"
         else "the frames at the input times, config.infer.time=1x")
  return (f"{_seconds(count, rate, kind)}, {4 * w}x{4 * h}; from {_seconds(n, plan.rate)}, "
          f"{w}x{h}; {how}")


def infer(config, workdir: str, plan: Plan | None = None, *, predict_fn=None) -> str:
  """Upscales `config.infer.input` with the checkpoint in `workdir` (or `predict_fn`), prints
  what it wrote and returns the output path. `plan`: `preflight`'s, when main.py has made it.

  A signal (Ctrl-C, SIGTERM, SIGHUP) raises `stop_signals.Interrupted` and leaves the output as it was.
  """
  plan = plan or preflight(config, workdir)
  ic = config.infer
  try:
    with stop_on_signals("--mode=infer", f"nothing was written to {plan.output}; rerun the same "
                         f"command to start again"):
      if predict_fn is None:
        frames = (input_time_frames(config.data.num_input_frames) if plan.time == "1x"
                  else None)  # 1x: the frames between the inputs are not reconstructed
        predict_fn, _ = restore_predict_fn(config, workdir, step=ic.step, tile=ic.tile,
                                           tile_overlap=ic.tile_overlap, dtype=ic.dtype,
                                           frames=frames)
      frames = upscale_frames(predict_fn, plan.sequence, progress=ic.progress, time=plan.time,
                              num_input_frames=config.data.num_input_frames)
      what = _write(plan, frames)
  except BaseException:
    if plan.made_folder and not os.listdir(plan.output):
      os.rmdir(plan.output)
    raise
  print(report.wrote_lines([(plan.output, what)]), flush=True)
  return plan.output
