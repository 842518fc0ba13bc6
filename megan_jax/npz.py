"""Reading `.npz` files (parameter sets, exported or converted state_dicts) without pickles.

`read` returns every array of an archive or raises a ValueError saying in words what the file is
instead (empty, cut short, not an archive, holding pickled objects): numpy's own messages would
advise loading it "unsafely", which a parameter file never needs. `starts_like_zip` tells a zip
file whose end is missing (a cut download or copy) from a file that is no zip at all; .npz and
torch.save files are both zip archives.
"""

import os
import zipfile

import numpy as np

ZIP_MAGIC = b"PK\x03\x04"  # the first local file header of a zip archive


class NpzError(ValueError):
  """The file is not a readable .npz; `reason` says what it is instead."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path, self.reason = path, reason


def starts_like_zip(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(len(ZIP_MAGIC)) == ZIP_MAGIC


def truncated_message(kind: str) -> str:
  return (f"looks truncated: it starts like a zip archive ({kind}) but its end, the zip "
          f"directory, is missing; copy or download it again")


def read(path: str) -> dict[str, np.ndarray]:
  """{name: array} of the .npz at `path`. Raises FileNotFoundError / IsADirectoryError naming it,
  or an NpzError "PATH: what it is instead"."""
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path} is a directory; give the .npz file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  if os.path.getsize(path) == 0:
    raise NpzError(path, "the file is empty (0 bytes), not a .npz archive")
  if not zipfile.is_zipfile(path):
    if starts_like_zip(path):
      raise NpzError(path, truncated_message(".npz"))
    raise NpzError(path, "not a .npz archive (numpy.savez writes one)")
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except ValueError as e:  # an object array: pickled Python objects, never parameters
    raise NpzError(path, "it holds pickled Python objects, not arrays of numbers") from e
  except (OSError, zipfile.BadZipFile, EOFError) as e:  # a member cut short or damaged
    raise NpzError(path, f"a damaged .npz archive ({e}); copy or write it again") from e
