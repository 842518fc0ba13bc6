"""Writes torch.save files without PyTorch, for the reader's and the converter's tests.

A pickle of `Global`s and `Call`s names any `module.name` without importing it, so a test can
write exactly what torch.save writes (`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`)
and what an attacker would (`os.system`). The layouts follow torch/serialization.py: the zip
format (`ARCHIVE/data.pkl`, `ARCHIVE/data/<key>`, `ARCHIVE/byteorder`) and the legacy stream
(magic number, protocol 1001, sys info, object, storage keys, then per storage an int64 element
count and the little-endian bytes).
"""

import io
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
STORAGE_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class Global:
  """`module.name` as a pickle GLOBAL; calling it gives a `Call` (a pickle REDUCE)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):
    return Call(self, args)


class Call:
  def __init__(self, func: Global, args: tuple):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


class Storage:
  """A storage as a persistent id: (storage, torch.<type>, key, 'cpu', numel[, view])."""

  def __init__(self, key: str, type_name: str, numel: int, view=None):
    self.key, self.type_name, self.numel, self.view = key, type_name, numel, view


class _Writer(pickle._Pickler):  # the Python pickler: its dispatch table can be extended
  dispatch = dict(pickle._Pickler.dispatch)

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy

  def persistent_id(self, obj):
    if not isinstance(obj, Storage):
      return None
    pid = ("storage", Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
    return pid + (obj.view,) if self.legacy else pid

  def save_global_ref(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  dispatch[Global] = save_global_ref


def dumps(obj, legacy: bool = False) -> bytes:
  buf = io.BytesIO()
  _Writer(buf, legacy).dump(obj)
  return buf.getvalue()


def tensor(storage: Storage, offset: int, size: tuple, stride: tuple) -> Call:
  """What torch.save pickles for a tensor."""
  return Global("torch._utils", "_rebuild_tensor_v2")(
      storage, offset, tuple(size), tuple(stride), False, Global("collections", "OrderedDict")())


def state_dict(arrays: dict, wrap=lambda sd: sd) -> tuple:
  """(pickled object, {key: array}) of a state_dict of contiguous numpy arrays; `wrap` nests it."""
  sd, storages = {}, {}
  for i, (name, a) in enumerate(arrays.items()):
    a = np.ascontiguousarray(a)
    key = str(i)
    storages[key] = a
    stride = tuple(s // a.itemsize for s in a.strides)
    sd[name] = tensor(Storage(key, STORAGE_TYPES[a.dtype], a.size), 0, a.shape, stride)
  return wrap(sd), storages


def write_zip(path: str, obj, storages: dict, byteorder: str = "little") -> str:
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", dumps(obj))
    z.writestr("archive/byteorder", byteorder)
    z.writestr("archive/version", "3\n")
    for key, a in storages.items():
      z.writestr(f"archive/data/{key}", a.astype(a.dtype.newbyteorder(
          "<" if byteorder == "little" else ">")).tobytes())
  return path


def write_legacy(path: str, obj, storages: dict) -> str:
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 8}}
  with open(path, "wb") as f:
    for header in (LEGACY_MAGIC, 1001, sys_info):
      f.write(pickle.dumps(header, protocol=2))
    f.write(dumps(obj, legacy=True))
    f.write(pickle.dumps(list(storages), protocol=2))
    for a in storages.values():
      f.write(struct.pack("<q", a.size) + a.astype(a.dtype.newbyteorder("<")).tobytes())
  return path
