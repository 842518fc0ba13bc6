"""Reads `torch.save` files without PyTorch, and without letting the pickle run any code.

Two formats:
  - zip (PyTorch >= 1.6, the default since): ARCHIVE/data.pkl is the pickled object, each tensor
    storage is the raw member ARCHIVE/data/<key>, and ARCHIVE/byteorder says "little" or "big"
    (little when absent);
  - legacy (PyTorch < 1.6, or `_use_new_zipfile_serialization=False`): consecutive pickles on one
    stream: a magic number, the protocol version 1001, a system-info dict, the object, the list of
    storage keys; then each storage in that order as an int64 element count and its raw bytes,
    always little-endian.
The tar format of PyTorch < 0.4 is refused.

A pickle can call any importable function while loading. Here every global it names goes through
`_SafeUnpickler.find_class`, which resolves only the allow-list `ALLOWED_GLOBALS` (the few names a
state_dict needs: `collections.OrderedDict`, the tensor rebuild functions, the storage types) to
harmless stand-ins defined in this module; any other name raises `UnsafePickleError` before it is
looked up, so it is never imported or called. Tensors come back as numpy arrays.
"""

import collections
import io
import os
import pickle
import struct
import sys
import tarfile
import zipfile

import ml_dtypes
import numpy as np

from megan_jax import npz

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFormatError(ValueError):
  """The file is not a readable torch.save file; the message names the file."""


class UnsafePickleError(TorchFormatError):
  """The pickle names a global outside the allow-list; nothing of it was imported or called."""


class _StorageType:
  """Stand-in for `torch.FloatStorage` etc.: only its dtype is used. Immutable, so that a
  pickle's BUILD opcode cannot change the dtype of the shared allow-list entry."""
  __slots__ = ("name", "dtype")

  def __init__(self, name: str):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "dtype", np.dtype(STORAGE_DTYPES[name]))

  def __setattr__(self, name, value):
    raise TorchFormatError(f"the pickle modifies torch.{self.name}, which a state_dict never does")

  def __call__(self, *args, **kwargs):
    raise TorchFormatError(f"the pickle calls torch.{self.name}, which a state_dict never does")


class _Storage:
  """A flat typed storage: `numel` elements of `dtype`, `offset` elements into storage `key`."""

  def __init__(self, key: str, dtype: np.dtype, numel: int, offset: int = 0):
    self.key, self.dtype, self.numel, self.offset = key, dtype, numel, offset


class _Tensor:
  """A tensor waiting for its storage bytes (they follow the pickle in the legacy format)."""

  def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _ints(value, what: str) -> tuple:
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in value):
    raise TorchFormatError(f"tensor {what} {value!r} is not a tuple of ints")
  return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """Stand-in for torch._utils._rebuild_tensor_v2: records where the tensor's elements are."""
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, _Storage) or not isinstance(storage_offset, int):
    raise TorchFormatError("_rebuild_tensor_v2 called without a storage and an integer offset")
  return _Tensor(storage, storage_offset, _ints(size, "size"), _ints(stride, "stride"))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  """Stand-in for torch._utils._rebuild_parameter: an nn.Parameter is its tensor."""
  del requires_grad, backward_hooks
  if not isinstance(data, _Tensor):
    raise TorchFormatError("_rebuild_parameter called without a tensor")
  return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
  """Unpickler whose globals come only from `ALLOWED_GLOBALS`; storages become `_Storage`."""

  def __init__(self, file, persistent_load):
    super().__init__(file)
    self._persistent_load = persistent_load

  def find_class(self, module, name):
    try:
      return ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f"the pickle wants {module}.{name}, which is not on the allow-list of a state_dict "
          f"({', '.join(sorted(f'{m}.{n}' for m, n in ALLOWED_GLOBALS if m != 'torch'))}, "
          f"torch.*Storage); refused without importing or calling it") from None

  def persistent_load(self, pid):
    return self._persistent_load(pid)


def _storage_pid(pid, legacy: bool) -> tuple:
  """Checks a persistent id ('storage', type, key, location, numel[, view]) and unpacks it."""
  size = 6 if legacy else 5
  if (not isinstance(pid, tuple) or len(pid) != size or pid[0] != "storage"
      or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
      or not isinstance(pid[4], int)):
    raise TorchFormatError(f"unexpected persistent id {pid!r}, expected a tensor storage")
  return pid[1:]


def _unpickle(data: bytes | io.BufferedIOBase, persistent_load):
  file = io.BytesIO(data) if isinstance(data, bytes) else data
  try:
    return _SafeUnpickler(file, persistent_load).load()
  except TorchFormatError:
    raise
  except Exception as e:  # pickle raises many types on corrupt data
    raise TorchFormatError(f"corrupt pickle ({type(e).__name__}: {e})") from e


def _no_storages(pid):
  raise TorchFormatError(f"unexpected persistent id {pid!r} in a header pickle")


def _read_zip(path: str) -> tuple:
  """(object, {key: raw bytes}, byte order) of a zip-format file."""
  with zipfile.ZipFile(path) as z:
    pickles = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise TorchFormatError(f"a zip archive but not a torch.save file: {len(pickles)} data.pkl "
                             "members, expected one")
    prefix = pickles[0][:-len("data.pkl")]
    names = set(z.namelist())
    order = (z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names
             else "little")
    storages = {}

    def persistent_load(pid):
      storage_type, key, _, numel = _storage_pid(pid, legacy=False)
      member = f"{prefix}data/{key}"
      if member not in names:
        raise TorchFormatError(f"storage {key} is missing from the archive ({member})")
      if key not in storages:
        storages[key] = z.read(member)
      return _Storage(key, storage_type.dtype, numel)

    obj = _unpickle(z.read(pickles[0]), persistent_load)
  if order not in ("little", "big"):
    raise TorchFormatError(f"unknown byteorder {order!r}")
  return obj, storages, order


def _read_legacy(path: str) -> tuple:
  """(object, {key: raw bytes}, "little") of a legacy-format file."""
  with open(path, "rb") as f:
    try:
      magic = _unpickle(f, _no_storages)
    except UnsafePickleError:
      raise
    except TorchFormatError as e:
      raise TorchFormatError(f"not a torch.save file: neither a zip archive nor a pickle ({e})")
    if magic != LEGACY_MAGIC:
      raise TorchFormatError("a pickle but not a torch.save file (no torch magic number)")
    protocol = _unpickle(f, _no_storages)
    if protocol != LEGACY_PROTOCOL:
      raise TorchFormatError(f"legacy torch.save protocol {protocol!r}, expected {LEGACY_PROTOCOL}")
    _unpickle(f, _no_storages)  # sys info: the storages are little-endian whatever it says
    roots = {}  # key -> (dtype, numel)

    def persistent_load(pid):
      storage_type, key, _, numel, view = _storage_pid(pid, legacy=True)
      roots.setdefault(key, (storage_type.dtype, numel))
      if view is None:
        return _Storage(key, storage_type.dtype, numel)
      if not isinstance(view, tuple) or len(view) != 3:
        raise TorchFormatError(f"storage view {view!r} is not (key, offset, size)")
      view_offset, view_numel = _ints(view[1:], "storage view")
      return _Storage(key, storage_type.dtype, view_numel, view_offset)

    obj = _unpickle(f, persistent_load)
    keys = _unpickle(f, _no_storages)
    if not isinstance(keys, list) or set(keys) != set(roots):
      raise TorchFormatError("the storage key list does not match the storages of the object")
    storages = {}
    for key in keys:
      dtype, numel = roots[key]
      head = f.read(8)
      if len(head) != 8:
        raise TorchFormatError(f"the file ends before storage {key}")
      (count,) = struct.unpack("<q", head)
      if count != numel:
        raise TorchFormatError(f"storage {key} holds {count} elements, the pickle says {numel}")
      storages[key] = f.read(count * dtype.itemsize)
  return obj, storages, "little"


def _materialise(obj, storages: dict, order: str):
  """Replaces every `_Tensor` in dicts, lists and tuples by a numpy array (a copy)."""
  if isinstance(obj, _Tensor):
    s = obj.storage
    dtype = s.dtype if order == sys.byteorder else s.dtype.newbyteorder()
    raw = storages[s.key]
    total = len(raw) // dtype.itemsize
    if s.offset + s.numel > total:
      raise TorchFormatError(f"storage {s.key} has {total} elements, fewer than its "
                             f"{s.offset + s.numel} (truncated file?)")
    flat = np.frombuffer(raw, dtype, count=s.numel, offset=s.offset * dtype.itemsize)
    if len(obj.size) != len(obj.stride) or any(st < 0 for st in obj.stride) or any(
        n < 0 for n in obj.size):
      raise TorchFormatError(f"bad tensor layout: size {obj.size}, stride {obj.stride}")
    if all(obj.size):
      last = obj.offset + sum((n - 1) * st for n, st in zip(obj.size, obj.stride))
      if obj.offset < 0 or last >= s.numel:
        raise TorchFormatError(f"tensor of size {obj.size} reads past its storage {s.key}")
    view = np.lib.stride_tricks.as_strided(
        flat[obj.offset:] if all(obj.size) else flat[:0], obj.size,
        tuple(st * dtype.itemsize for st in obj.stride), writeable=False)
    return np.array(view, dtype=s.dtype)
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialise(v, storages, order)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v, storages, order) for v in obj)
  return obj


def load(path: str):
  """The object saved by `torch.save` at `path`, with numpy arrays in place of tensors.

  Raises TorchFormatError (UnsafePickleError for a global outside the allow-list) naming `path`.
  """
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path} is a directory; give the checkpoint file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  try:
    if zipfile.is_zipfile(path):
      obj, storages, order = _read_zip(path)
    elif os.path.getsize(path) == 0:
      raise TorchFormatError("the file is empty (0 bytes)")
    elif npz.starts_like_zip(path):
      raise TorchFormatError(npz.truncated_message("torch.save's format"))
    elif tarfile.is_tarfile(path):
      raise TorchFormatError("the tar format of PyTorch < 0.4 is not supported; load it with "
                             "that PyTorch and re-save it with torch.save(state_dict, path)")
    else:
      obj, storages, order = _read_legacy(path)
    return _materialise(obj, storages, order)
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
  except TorchFormatError as e:
    raise TorchFormatError(f"{path}: {e}") from None
  except (OSError, zipfile.BadZipFile, EOFError) as e:
    raise TorchFormatError(f"{path}: cannot read ({e})") from e
