"""npz.read: every file that is not a .npz of arrays is named in words, never with advice to load
it unsafely; config.pretrained says the file is not a parameter file."""

import re

import numpy as np
import pytest

from megan_jax import npz, pretrained


def _files(tmp_path) -> dict:
  """{name: (path, what the message must say)} of each kind of bad file."""
  good = tmp_path / "good.npz"
  np.savez(good, w=np.arange(1000.0))
  data = good.read_bytes()
  damaged = bytearray(data)
  damaged[200] ^= 0xFF  # inside the array's bytes: the member's CRC no longer matches
  objects = tmp_path / "objects.npz"
  np.savez(objects, w=np.array([{"a": 1}], dtype=object))
  files = {"empty.npz": (b"", r"the file is empty \(0 bytes\), not a \.npz archive"),
           "cut.npz": (data[:len(data) // 2], r"looks truncated: it starts like a zip archive "
                       r"\(\.npz\) but its end, the zip directory, is missing"),
           "text.npz": (b"weights, honest\n", r"not a \.npz archive"),
           "damaged.npz": (bytes(damaged), r"a damaged \.npz archive \(Bad CRC-32")}
  out = {"objects.npz": (str(objects), "it holds pickled Python objects, not arrays of numbers")}
  for name, (content, what) in files.items():
    (tmp_path / name).write_bytes(content)
    out[name] = (str(tmp_path / name), what)
  return out


def test_bad_files_are_named_in_words(tmp_path):
  for name, (path, what) in _files(tmp_path).items():
    with pytest.raises(npz.NpzError) as info:
      npz.read(path)
    assert re.fullmatch(re.escape(path) + ": " + what + ".*", str(info.value)), (name, info.value)
    assert "allow_pickle" not in str(info.value) and "unsafe" not in str(info.value)
  (tmp_path / "folder.npz").mkdir()
  with pytest.raises(IsADirectoryError, match="folder.npz is a directory; give the .npz file"):
    npz.read(str(tmp_path / "folder.npz"))
  assert np.array_equal(npz.read(str(tmp_path / "good.npz"))["w"], np.arange(1000.0))


def test_pretrained_text_file_is_not_a_parameter_file(tmp_path):
  path, _ = _files(tmp_path)["text.npz"]
  with pytest.raises(ValueError) as info:
    pretrained.load(path)
  assert str(info.value) == (f"config.pretrained: {path} is not a parameter file (not a .npz "
                             f"archive (numpy.savez writes one)); write one with --mode=export")
