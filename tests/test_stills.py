"""scikit-image's photographs as training clips (data/stills.py, data.stills)."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from megan_jax.data import pipeline, stills
from megan_jax.data.sources import DataError


def test_first_frame_is_the_central_view_of_the_photograph():
  """astronaut is 512x512: the 408x408 view's centre is 52 pixels in, an integer offset, where the
  cubic spline reproduces the samples, so frame 0 of every motion is the plain crop."""
  image = np.asarray(Image.open(stills.still_path("astronaut")).convert("RGB"))
  clips = stills.still_clips(("astronaut",), num_frames=1)
  assert [c.name for c in clips] == [
      "still_astronaut_pan", "still_astronaut_zoom", "still_astronaut_rotate"]
  for clip in clips:
    assert clip.frames.shape == (1, 408, 408, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_array_equal(clip.frames[0], image[52:460, 52:460])


def test_grey_photographs_fill_three_channels():
  frame = stills.load_still("camera")
  assert frame.shape == (512, 512, 3)
  np.testing.assert_array_equal(frame[..., 0], frame[..., 2])


def test_unknown_still_is_a_clear_error():
  with pytest.raises(DataError, match="config.data.stills: 'lena' unknown"):
    stills.still_path("lena")


def test_an_image_file_path_is_a_still(tmp_path):
  """A 60x40 photograph: the 48x32 view (0.8 of each side) starts 6 rows and 4 columns in."""
  image = np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8)
  path = tmp_path / "wall.png"
  Image.fromarray(image).save(path)
  clips = stills.still_clips((str(path),), num_frames=1)
  assert [c.name for c in clips] == ["still_wall_pan", "still_wall_zoom", "still_wall_rotate"]
  for clip in clips:
    np.testing.assert_array_equal(clip.frames[0], image[6:54, 4:36])


def test_a_file_that_is_no_image_names_itself(tmp_path):
  path = tmp_path / "notes.png"
  path.write_text("not an image")
  with pytest.raises(DataError, match="notes.png: not an image"):
    stills.load_still(str(path))


@pytest.fixture
def rendered(monkeypatch):
  """What the pipeline asks the stills renderer for; it renders two 9-frame clips of zeros."""
  asked = {}
  def fake(names, num_frames=13, scales=(1,)):
    asked["names"], asked["scales"] = names, scales
    return [stills.ArraySequence(f"s{k}", np.zeros((9, 8, 8, 3), np.uint8)) for k in range(2)]
  monkeypatch.setattr(pipeline, "still_clips", fake)
  return asked


def test_stills_add_every_window_of_every_clip(rendered):
  """9-frame clips give 3 windows of 7 each, after the embedded clips' windows."""
  cfg = ml_collections.ConfigDict({"name": "embedded", "clips": ("bikes",), "stills": ("coffee",)})
  source = pipeline.make_train_source(cfg)
  assert rendered["names"] == ("coffee",) and rendered["scales"] == (1,)
  assert len(source) == (250 - 6) + 2 * 3
  assert source[len(source) - 1]["where"] == "s1 frames 2..8"


def test_a_downscaled_still_is_the_photograph_at_half_size(tmp_path):
  """A 60x40 ramp f = 2 row + 2 column: PIL's antialiased bicubic keeps a ramp away from the
  borders, so the half-size pixel (i, j), centred on (2i + 0.5, 2j + 0.5), is 4i + 4j + 2 (an
  integer after each of PIL's two 1-D passes, so no rounding). The 24x16 view of the 30x20
  half-size photograph starts 3 rows and 2 columns in (frame 0 is the plain crop)."""
  rows, cols = np.mgrid[:60, :40]
  image = np.repeat((2 * rows + 2 * cols)[..., None], 3, axis=-1).astype(np.uint8)
  path = tmp_path / "ramp.png"
  Image.fromarray(image).save(path)
  clips = stills.still_clips((str(path),), num_frames=1, scales=(1, 2))
  assert [c.name for c in clips] == [
      "still_ramp_pan", "still_ramp_zoom", "still_ramp_rotate",
      "still_ramp_x2_pan", "still_ramp_x2_zoom", "still_ramp_x2_rotate"]
  i, j = np.mgrid[3:27, 2:18]
  for clip in clips[3:]:
    assert clip.frames.shape == (1, 24, 16, 3)
    np.testing.assert_array_equal(clip.frames[0, ..., 1], 4 * i + 4 * j + 2)


def test_the_config_names_the_scales_of_the_stills(rendered):
  cfg = ml_collections.ConfigDict({"name": "embedded", "clips": ("bikes",), "stills": ("coffee",),
                                   "stills_scales": (1, 2)})
  pipeline.make_train_source(cfg)
  assert rendered["scales"] == (1, 2)
