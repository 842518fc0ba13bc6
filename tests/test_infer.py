"""infer: window plan, frame count 2N-1, 4x size, 2x frame rate (or 1x), mp4 and PNG outputs, errors."""

import fractions
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import infer_fakes
import train_fakes
from megan_jax import infer as infer_module
from megan_jax.data.sources import ArraySequence
from megan_jax.infer import infer, infer_windows, upscale_frames
from megan_jax.models import ModelSpec, build_model
from megan_jax.models.reconstruction import Reconstruction

from configs import vimeo  # pylint: disable=wrong-import-order

H, W, N, FPS = 30, 46, 9, 10  # source video: odd multiples of 2, so the model input is padded


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
  workdir = str(root / "workdir")
  train_fakes.save_random_params(workdir, model, (1, 4, 16, 16, 3), train=False)
  video = str(root / "source.mp4")
  infer_fakes.write_video(video, _source_frames(), FPS)
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
  one_x = list(upscale_frames(tracer, ArraySequence("clip", frames), progress=False, time="1x"))
  # Output frames 0, 2, ..., 16 (the input times): window 0 at 0, 2, 4, 6; window 3 at its 2, 4, 6
  # (outputs 8, 10, 12); window 5 at its 4, 6 (outputs 14, 16).
  assert [int(f[0, 0, 0]) for f in one_x] == [0, 2, 4, 6, 32, 34, 36, 54, 56]


@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 5, 8])
def test_1x_keeps_the_frames_at_the_input_times(num_frames):
  """The stand-in repeats each input 4x4 at the input times: 1x gives back the N inputs."""
  frames = np.random.default_rng(num_frames).integers(0, 256, (num_frames, 4, 4, 3), np.uint8)
  out = list(upscale_frames(infer_fakes.nearest_predict, ArraySequence("c", frames),
                            progress=False, time="1x"))
  assert len(out) == num_frames
  for got, frame in zip(out, frames):
    np.testing.assert_array_equal(got, frame.repeat(4, 0).repeat(4, 1))


def test_video_to_mp4(run, capsys):
  config, workdir, video, root = run
  config = ml_collections.ConfigDict(config.to_dict())
  config.infer.input, config.infer.output = video, str(root / "out.mp4")
  path = infer(config, workdir)
  assert path == config.infer.output
  wrote = capsys.readouterr().out.splitlines()[-1]
  # Hand-derived: 9 frames at 10 fps (0.9 s) give 17 at 20 fps (0.85 s), the 8 between synthesised.
  assert wrote == (f"wrote {path}  (17 frames at 20 fps = 0.85 s, {4 * W}x{4 * H}; from 9 frames "
                   f"at 10 fps = 0.9 s, {W}x{H}; 2x the frame rate: 8 frames synthesised between "
                   f"the inputs)")
  rate, frames = infer_fakes.read_video(path)
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
  rate, frames = infer_fakes.read_video(infer(config, workdir))
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
  got_rate, got = infer_fakes.read_video(path)
  assert len(got) == 5 and got_rate == rate and got[0].shape == (16, 24, 3)
  assert [int(round(f.mean())) for f in got] == pytest.approx([40 * i for i in range(5)], abs=3)


def test_time_1x_same_frame_count_rate_and_the_2x_frames_at_the_input_times(run, tmp_path):
  config, _, video, _ = run
  config = ml_collections.ConfigDict(config.to_dict())
  config.infer.input = video
  outputs = {}
  for time, output in [("2x", "two"), ("1x", "one"), ("1x", "one.mp4")]:
    config.infer.time, config.infer.output = time, str(tmp_path / output)
    outputs[output] = infer(config, str(tmp_path / "w"), predict_fn=infer_fakes.nearest_predict)
  two, one = (infer_fakes.read_frames(outputs[k]) for k in ("two", "one"))
  assert len(two) == 2 * N - 1 and len(one) == N
  for a, b in zip(one, two[::2]):
    np.testing.assert_array_equal(a, b)
  rate, frames = infer_fakes.read_video(outputs["one.mp4"])
  assert rate == FPS and len(frames) == N and frames[0].shape == (4 * H, 4 * W, 3)



def _compiled(fn, *args):
  """(the compiled program, its FLOPs as XLA counts them)."""
  compiled = jax.jit(fn).lower(*args).compile()
  cost = compiled.cost_analysis()
  return compiled, (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_reconstruction_of_only_the_frames_asked_for():
  """MEGAN's back end with frames=(0, 2, 4, 6): the same outputs as all 7 at those indices, and
  the FLOPs saved are the per-frame work (residual blocks, upsampler) of the 3 frames dropped,
  counted by hand."""
  m = vimeo.get_config("tiny").model
  recon = Reconstruction(ModelSpec.from_config(m).conv, m.pfrdb_blocks, m.pfrdb_slope, m.back_rbs,
                         m.hr_features)
  c, hr, h, w = m.nf, m.hr_features, 16, 16
  x = jax.random.normal(jax.random.key(3), (1, 7, h, w, c))  # (B, 2n+1, H, W, C) features
  variables = recon.init(jax.random.key(0), x)
  full, all_flops = _compiled(recon.apply, variables, x)
  part, part_flops = _compiled(lambda v, x: recon.apply(v, x, (0, 2, 4, 6)), variables, x)
  np.testing.assert_allclose(np.asarray(part(variables, x)),
                             np.asarray(full(variables, x))[:, ::2], atol=1e-6)
  conv = lambda pixels, cin, cout: 2 * pixels * 9 * cin * cout  # 3x3 conv, multiply-adds x 2
  per_frame = (m.back_rbs * 2 * conv(h * w, c, c) + conv(h * w, c, 4 * c)  # RBs, up1
               + conv(4 * h * w, c, 4 * hr) + conv(16 * h * w, hr, hr)    # up2, hr_conv
               + conv(16 * h * w, hr, 3))                                 # conv_last
  assert all_flops - part_flops == pytest.approx(3 * per_frame, rel=0.03)


@pytest.mark.parametrize("num_frames", [2, 5, 9])
def test_1x_from_the_outputs_at_the_input_times_only(num_frames):
  """A predict fn that returns only the n+1 outputs at the input times (as the model does at 1x)
  gives the same frames as one that returns all 2n+1."""
  frames = np.random.default_rng(num_frames).integers(0, 256, (num_frames, 4, 4, 3), np.uint8)
  seq = ArraySequence("c", frames)
  even = lambda lr: infer_fakes.nearest_predict(lr)[:, ::2]
  got = list(upscale_frames(even, seq, progress=False, time="1x"))
  want = list(upscale_frames(infer_fakes.nearest_predict, seq, progress=False, time="1x"))
  assert len(got) == num_frames
  np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_1x_asks_the_model_for_its_frames_only_and_names_the_checkpoint(run, tmp_path, capsys,
                                                                         monkeypatch):
  """infer at 1x restores a predictor for output frames (0, 2, 4, 6) of the tiny MEGAN (whose
  output then has 4 frames: shapes only, nothing compiled) and says which checkpoint it uses."""
  config, workdir, video, _ = run
  config = ml_collections.ConfigDict(config.to_dict())
  config.infer.input, config.infer.time = video, "1x"
  config.infer.output = str(tmp_path / "one")
  restore, asked = infer_module.restore_predict_fn, []

  def spy(*args, **kwargs):
    predictor, step = restore(*args, **kwargs)
    asked.append(predictor.frames)
    x = jnp.zeros((1, 4, 16, 16, 3))
    out = jax.eval_shape(lambda v: predictor._jit.model.apply(  # pylint: disable=protected-access
        v, x, train=False, frames=predictor.frames), predictor.variables)
    assert out.shape == (1, 4, 64, 64, 3)
    return (lambda lr: infer_fakes.nearest_predict(lr)[:, ::2]), step

  monkeypatch.setattr(infer_module, "restore_predict_fn", spy)
  assert len(infer_fakes.read_frames(infer(config, workdir))) == N
  assert asked == [(0, 2, 4, 6)]
  out = capsys.readouterr().out
  assert f"using the parameters of step 3 in {os.path.join(workdir, 'checkpoints')}\n" in out
