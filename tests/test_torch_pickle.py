"""torch_pickle: both torch.save formats read exactly; any pickle beyond a state_dict refused."""

import os
import pickle
import re
import tarfile
import zipfile

import numpy as np
import pytest

from megan_jax import torch_pickle
from torch_files import Global, Storage, state_dict, tensor, write_legacy, write_zip

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "zsm_small")


@pytest.mark.parametrize("name", ["zsm_small.pth", "zsm_small_legacy.pth"])
def test_official_files_read_exactly(name):
  """Files written by torch.save itself (torch 2.14) equal the .npz of the same tensors."""
  got = torch_pickle.load(os.path.join(FIXTURES, name))
  with np.load(os.path.join(FIXTURES, "zsm_small_state_dict.npz")) as ref:
    assert list(got) == list(ref.files)  # the state_dict's order, 248 tensors
    for key in ref.files:
      assert got[key].dtype == ref[key].dtype and got[key].shape == ref[key].shape, key
      np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_strided_views_and_byte_order(tmp_path):
  """A transposed tensor, a legacy storage view, a big-endian zip, an int64 tensor."""
  base = np.arange(12, dtype=np.float32)
  storage = Storage("0", "FloatStorage", 12)
  obj = {"t": tensor(storage, 1, (3, 2), (1, 3)),  # base[1:].reshape(2, 3).T, by strides
         "v": tensor(Storage("0", "FloatStorage", 12, view=("v0", 6, 4)), 1, (2,), (2,)),
         "i": tensor(Storage("1", "LongStorage", 3), 0, (3,), (1,))}
  storages = {"0": base, "1": np.array([5, -6, 7], np.int64)}
  legacy = torch_pickle.load(write_legacy(str(tmp_path / "a.pth"), obj, storages))
  np.testing.assert_array_equal(legacy["t"], [[1, 4], [2, 5], [3, 6]])
  np.testing.assert_array_equal(legacy["v"], [7, 9])  # elements 1 and 3 of the view base[6:10]
  np.testing.assert_array_equal(legacy["i"], [5, -6, 7])
  del obj["v"]  # views exist only in the legacy format
  big = torch_pickle.load(write_zip(str(tmp_path / "b.pth"), obj, storages, byteorder="big"))
  np.testing.assert_array_equal(big["t"], legacy["t"])
  assert big["i"].dtype == np.int64 and big["i"].tolist() == [5, -6, 7]


class _System:
  """What an attacker pickles: os.system(command) runs while unpickling."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def _write_pickle(path, obj, storages):
  with open(path, "wb") as f:
    pickle.dump(obj, f)
  return path


@pytest.mark.parametrize("write", [write_zip, write_legacy, _write_pickle])
def test_a_pickle_calling_os_system_is_refused_and_not_run(tmp_path, write):
  marker = tmp_path / "pwned"
  weights, storages = state_dict({"w": np.ones(2, np.float32)})
  weights["x"] = _System(f"touch {marker}")
  assert pickle.loads(pickle.dumps(_System(f"touch {tmp_path / 'check'}"))) == 0
  assert (tmp_path / "check").exists()  # the payload does run when unpickled unrestricted
  path = write(str(tmp_path / "evil.pth"), _System(f"touch {marker}") if write is _write_pickle
               else weights, storages)
  with pytest.raises(torch_pickle.UnsafePickleError, match=r"evil.pth: .*(posix|os)\.system.*"
                     r"not on the allow-list"):
    torch_pickle.load(path)
  assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("torch", "load"),
                                         ("numpy.core.multiarray", "_reconstruct")])
def test_any_global_outside_the_allow_list_is_refused(tmp_path, module, name):
  path = write_zip(str(tmp_path / "g.pth"), {"w": Global(module, name)("1")}, {})
  with pytest.raises(torch_pickle.UnsafePickleError, match=rf"{module}\.{name}"):
    torch_pickle.load(path)


def test_allow_listed_stand_ins_cannot_be_abused(tmp_path):
  storage_type = Global("torch", "FloatStorage")
  with pytest.raises(torch_pickle.TorchFormatError, match="calls torch.FloatStorage"):
    torch_pickle.load(write_zip(str(tmp_path / "a.pth"), {"w": storage_type(3)}, {}))
  with pytest.raises(torch_pickle.TorchFormatError, match="without a storage"):
    torch_pickle.load(write_zip(str(tmp_path / "b.pth"), {"w": Global(
        "torch._utils", "_rebuild_tensor_v2")("not a storage", 0, (1,), (1,))}, {}))


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
  base = np.arange(4, dtype=np.float32)
  past_end = {"w": tensor(Storage("0", "FloatStorage", 4), 2, (3,), (1,))}
  with pytest.raises(torch_pickle.TorchFormatError, match="reads past its storage"):
    torch_pickle.load(write_zip(str(tmp_path / "a.pth"), past_end, {"0": base}))
  weights, storages = state_dict({"w": base})
  with pytest.raises(torch_pickle.TorchFormatError, match="storage 0 is missing"):
    torch_pickle.load(write_zip(str(tmp_path / "b.pth"), weights, {}))
  good = write_legacy(str(tmp_path / "c.pth"), weights, storages)
  with open(good, "rb") as f:
    data = f.read()
  with open(tmp_path / "truncated.pth", "wb") as f:
    f.write(data[:-6])
  with pytest.raises(torch_pickle.TorchFormatError, match="truncated.pth: storage 0 has 2 "
                     "elements, fewer than"):
    torch_pickle.load(str(tmp_path / "truncated.pth"))
  (tmp_path / "text.pth").write_text("hello\n")
  with pytest.raises(torch_pickle.TorchFormatError, match="text.pth: not a torch.save file: neither a zip"):
    torch_pickle.load(str(tmp_path / "text.pth"))
  with open(tmp_path / "other.pkl", "wb") as f:
    pickle.dump({"w": 1}, f)
  with pytest.raises(torch_pickle.TorchFormatError, match="no torch magic number"):
    torch_pickle.load(str(tmp_path / "other.pkl"))
  with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
    z.writestr("readme.txt", "hi")
  with pytest.raises(torch_pickle.TorchFormatError, match="0 data.pkl members"):
    torch_pickle.load(str(tmp_path / "plain.zip"))
  with tarfile.open(tmp_path / "old.pth", "w") as t:
    t.add(good, arcname="pickle")
  with pytest.raises(torch_pickle.TorchFormatError, match="tar format of PyTorch < 0.4"):
    torch_pickle.load(str(tmp_path / "old.pth"))
  with pytest.raises(FileNotFoundError, match="nothing.pth"):
    torch_pickle.load(str(tmp_path / "nothing.pth"))


def test_cut_empty_and_folder_checkpoints_say_what_they_are(tmp_path):
  weights, storages = state_dict({"w": np.arange(64, dtype=np.float32)})
  data = open(write_zip(str(tmp_path / "whole.pth"), weights, storages), "rb").read()
  (tmp_path / "cut.pth").write_bytes(data[:len(data) - 30])  # the zip's end record gone
  with pytest.raises(torch_pickle.TorchFormatError, match=re.escape(
      "cut.pth: looks truncated: it starts like a zip archive (torch.save's format) but its end")):
    torch_pickle.load(str(tmp_path / "cut.pth"))
  (tmp_path / "empty.pth").write_bytes(b"")
  with pytest.raises(torch_pickle.TorchFormatError, match=r"empty.pth: the file is empty"):
    torch_pickle.load(str(tmp_path / "empty.pth"))
  (tmp_path / "run.pth").mkdir()
  with pytest.raises(IsADirectoryError, match=r"run.pth is a directory; give the checkpoint file"):
    torch_pickle.load(str(tmp_path / "run.pth"))
