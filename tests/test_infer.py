"""infer: window plan, frame count 2N-1, 4x size, 2x frame rate, mp4 and PNG outputs, errors."""

import fractions
import os

import av
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from megan_jax import checkpointing
from megan_jax import infer as infer_module
from megan_jax.data.sources import ArraySequence
from megan_jax.infer import infer, infer_windows, upscale_frames
from megan_jax.models import build_model

from configs import vimeo  # pylint: disable=wrong-import-order

H, W, N, FPS = 30, 46, 9, 10  # source video: odd multiples of 2, so the model input is padded


def _write_video(path, frames, fps):
  """Writes uint8 (T, H, W, 3) frames with PyAV (independently of megan_jax.infer)."""
  codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
  with av.open(path, mode="w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode(None))


def _source_frames():
  yy, xx = np.mgrid[0:H, 0:W]
  return np.stack([np.stack([(xx * 5 + 9 * t) % 256, (yy * 7) % 256, np.full_like(xx, 20 * t)], -1)
                   for t in range(N)]).astype(np.uint8)  # (N, H, W, 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir with a checkpoint of the tiny model (random weights), its config and a video."""
  root = tmp_path_factory.mktemp("infer")
  config = vimeo.get_config("tiny")
  config.infer.progress = False
  model = build_model(config.model)
  keys = {"params": jax.random.key(0), "lmga": jax.random.key(1)}
  shapes = jax.eval_shape(lambda: model.init(keys, jnp.zeros((1, 4, 16, 16, 3)), train=False))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype),
                        shapes["params"])
  workdir = str(root / "workdir")
  manager = checkpointing.make_manager(workdir, async_save=False)
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
  manager.wait_until_finished()
  manager.close()
  video = str(root / "source.mp4")
  _write_video(video, _source_frames(), FPS)
  return config, workdir, video, root


def _covered(plan):
  out = []
  for inputs, lo, hi in plan:
    out += [2 * inputs[0] + k for k in range(lo, hi)]
  return out


@pytest.mark.parametrize("num_frames", range(1, 21))
def test_every_output_frame_once(num_frames):
  plan = infer_windows(num_frames)
  if num_frames >= 4:
    assert _covered(plan) == list(range(2 * num_frames - 1))
    assert plan[-1][0][-1] == num_frames - 1  # the last window ends at the final frame
    for (a, _, _), (b, _, _) in zip(plan[:-1], plan[1:-1]):
      assert b[0] == a[-1]  # regular windows share exactly one input frame
  else:
    (inputs, lo, hi), = plan
    assert inputs == tuple(min(k, num_frames - 1) for k in range(4)) and (lo, hi) == (0, 2 * num_frames - 1)


def test_nine_frames_by_hand():
  assert infer_windows(9) == [((0, 1, 2, 3), 0, 7), ((3, 4, 5, 6), 1, 7), ((5, 6, 7, 8), 3, 7)]


def test_output_frames_come_from_the_right_window():
  """A tracer predict fn writes (first input's value, position in window) into each frame."""
  frames = np.stack([np.full((4, 4, 3), 10 * t, np.uint8) for t in range(N)])

  def tracer(lr):  # (1, 4, h, w, 3) -> (1, 7, 4h, 4w, 3)
    first = lr[0, 0, 0, 0, 0] * 255 / 10
    return np.stack([np.full((16, 16, 3), (first * 10 + k) / 255) for k in range(7)])[None]

  out = list(upscale_frames(tracer, ArraySequence("clip", frames), progress=False))
  # Hand-derived: windows start at 0, 3, 5; outputs 0-6, 7-12 and 13-16 come from them.
  expected = ([10 * 0 + k for k in range(7)] + [10 * 3 + k for k in range(1, 7)]
              + [10 * 5 + k for k in range(3, 7)])
  assert [int(f[0, 0, 0]) for f in out] == expected
  assert all(f.shape == (16, 16, 3) and f.dtype == np.uint8 for f in out)


def _read_video(path):
  with av.open(path) as container:
    stream = container.streams.video[0]
    rate = stream.average_rate
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
  return rate, frames


def test_video_to_mp4(run, capsys):
  config, workdir, video, root = run
  config = ml_collections.ConfigDict(config.to_dict())
  config.infer.input, config.infer.output = video, str(root / "out.mp4")
  path = infer(config, workdir)
  assert path == config.infer.output
  wrote = capsys.readouterr().out.splitlines()[-1].split()
  assert wrote[:3] == ["wrote", path, f"({2 * N - 1}"] and f"{4 * W}x{4 * H}," in wrote
  rate, frames = _read_video(path)
  assert len(frames) == 2 * N - 1
  assert frames[0].shape == (4 * H, 4 * W, 3)
  assert rate == fractions.Fraction(2 * FPS)


def test_video_to_png_folder(run):
  config, workdir, video, root = run
  config = ml_collections.ConfigDict(config.to_dict())
  config.infer.input, config.infer.output = video, str(root / "frames")
  path = infer(config, workdir)
  names = sorted(os.listdir(path))
  assert names == [f"{i:06d}.png" for i in range(2 * N - 1)]
  with Image.open(os.path.join(path, names[-1])) as im:
    assert im.size == (4 * W, 4 * H) and im.mode == "RGB"


def test_frame_folder_to_mp4_uses_configured_fps(run, tmp_path):
  config, workdir, _, _ = run
  src = tmp_path / "src"
  src.mkdir()
  for i, frame in enumerate(_source_frames()[:5]):
    Image.fromarray(frame).save(src / f"f{i}.png")
  config = ml_collections.ConfigDict(config.to_dict())
  config.infer.input, config.infer.output, config.infer.fps = str(src), str(tmp_path / "o.mkv"), 12
  rate, frames = _read_video(infer(config, workdir))
  assert len(frames) == 9 and rate == 24 and frames[0].shape == (4 * H, 4 * W, 3)


def test_missing_input_is_a_clear_error(run, tmp_path):
  config, workdir, _, _ = run
  config = ml_collections.ConfigDict(config.to_dict())
  config.infer.input = str(tmp_path / "nope.mp4")
  with pytest.raises(FileNotFoundError, match="nope.mp4"):
    infer(config, workdir)
  config.infer.input = ""
  with pytest.raises(ValueError, match="config.infer.input"):
    infer(config, workdir)


def test_missing_checkpoint_is_a_clear_error(run, tmp_path):
  config, _, video, _ = run
  config = ml_collections.ConfigDict(config.to_dict())
  config.infer.input, config.infer.output = video, str(tmp_path / "o.mp4")
  empty = str(tmp_path / "empty_workdir")
  with pytest.raises(FileNotFoundError, match="empty_workdir"):
    infer(config, empty)


def test_wrong_model_config_is_a_clear_error(run, tmp_path):
  config, workdir, video, _ = run
  config = ml_collections.ConfigDict(config.to_dict())
  config.infer.input, config.infer.output = video, str(tmp_path / "o.mp4")
  config.model.nf = 12
  with pytest.raises(ValueError, match="do not match config.model"):
    infer(config, workdir)


@pytest.mark.parametrize("codecs", [("libx264", "mpeg4"), ("no-such-codec", "mpeg4")])
def test_write_video_codecs_and_ntsc_rate(monkeypatch, tmp_path, codecs):
  monkeypatch.setattr(infer_module, "_CODECS", codecs)
  frames = [np.full((16, 24, 3), 40 * i, np.uint8) for i in range(5)]
  rate = 2 * fractions.Fraction(30000, 1001)
  path = str(tmp_path / "v.mp4")
  assert infer_module.write_video(iter(frames), path, rate) == 5
  got_rate, got = _read_video(path)
  assert len(got) == 5 and got_rate == rate and got[0].shape == (16, 24, 3)
  assert [int(round(f.mean())) for f in got] == pytest.approx([40 * i for i in range(5)], abs=3)
