r"""MEGAN on Vimeo-90K septuplets, the paper's setting (Sec. 3.5-3.6, Sec. 4.1).

    python -m megan_jax.main --config=configs/vimeo.py --workdir=runs/megan \
        --config.data.root=/data/vimeo_septuplet
    python -m megan_jax.main --config=configs/vimeo.py:no_lmga ...   # Table 2 ablations:
        # :no_lmga, :no_nlrb, and :zsm (the Zooming Slow-Mo structure, trained identically)

Batch 16 of 4 x 32x32 LR crops (7 x 128x128 GT), Adam (0.9, 0.99), cosine annealing from 1e-4
to 1e-7 restarted every 20,000 iterations, Charbonnier loss (eps 1e-3).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from megan_jax.models import model_config

VIMEO_ROOT = "data/vimeo_septuplet"


def eval_spec(name: str, kind: str, root, list_file: str | None = None, lr_root=None,
              **extra) -> ml_collections.ConfigDict:
  """An evaluation set for `data.pipeline.open_eval_dataset` (root, lr_root: str or FieldReference)."""
  return ml_collections.ConfigDict(dict(
      name=name, kind=kind, root=root, list_file=list_file,
      lr_root=placeholder(str) if lr_root is None else lr_root, **extra))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: the model variant, "megan" (default), "no_lmga", "no_nlrb" or "zsm"."""
  c = ml_collections.ConfigDict()
  # The val and eval sets follow --config.data.root and lr_root unless set themselves.
  root = ml_collections.FieldReference(VIMEO_ROOT)
  lr_root = placeholder(str)
  vimeo_test = lambda subset, **extra: eval_spec(
      f"Vimeo-{subset.capitalize()}", "vimeo", root.identity(), subset, lr_root.identity(), **extra)
  c.seed = 0
  c.model = model_config(arg or "megan")

  c.data = ml_collections.ConfigDict()
  c.data.name = "vimeo"
  c.data.root = root
  c.data.list_file = "train"        # packaged sep_trainlist.txt, or a path (relative to root)
  c.data.lr_root = lr_root           # pre-made LR tree (vimeo_septuplet_matlabLRx4); None: bicubic
  c.data.crop = 32                   # LR crop; the GT crop is 4x
  c.data.num_input_frames = 4
  c.data.augment = True              # flips, 90-degree rotation, time reversal
  c.data.workers = 4                 # grain worker processes (0: in the main process)
  c.data.read_threads = 4

  c.batch_size = 16                  # global, split over devices and processes
  c.num_steps = 600_000
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 1e-4
  c.optimizer.min_lr = 1e-7
  c.optimizer.cycle_steps = 20_000   # cosine cycle length
  c.optimizer.restarts = placeholder(int)  # None: as many as num_steps needs
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.99
  c.loss_eps = 1e-3

  c.log_every = 100
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3             # plus the best by validation PSNR-Y
  c.async_checkpointing = True
  c.eval_every = 20_000              # periodic validation; 0 turns it off
  c.val = vimeo_test("fast", max_clips=64)
  c.final_eval = False               # run `evaluate` after the last step

  c.eval = ml_collections.ConfigDict()
  c.eval.datasets = [vimeo_test(s) for s in ("fast", "medium", "slow")]  # Table 1
  c.eval.step = placeholder(int)     # checkpoint; None: the latest
  c.eval.max_clips = placeholder(int)
  c.eval.batch_size = 1
  c.eval.tile = placeholder(int)     # LR tile size for large frames; None: whole frames
  c.eval.tile_overlap = 16
  c.eval.dtype = placeholder(str)
  c.eval.baseline = True             # also score bicubic + frame blending
  c.eval.save_frames = False
  c.eval.save_crops = True
  c.eval.label = placeholder(str)
  c.eval.progress = True

  c.infer = ml_collections.ConfigDict()
  c.infer.input = placeholder(str)   # a video file or a folder of frames
  c.infer.output = placeholder(str)  # .mp4/.mkv/.mov/.avi, or a folder for PNG frames
  c.infer.step = placeholder(int)
  c.infer.tile = placeholder(int)
  c.infer.tile_overlap = 16
  c.infer.dtype = placeholder(str)
  c.infer.fps = placeholder(float)
  c.infer.progress = True

  c.deterministic = False            # XLA deterministic ops (GPU only; the CPU always is)
  c.compilation_cache_dir = placeholder(str)
  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = False      # jax.distributed.initialize; unset fields are auto-detected
  c.distributed.coordinator_address = placeholder(str)
  c.distributed.num_processes = placeholder(int)
  c.distributed.process_id = placeholder(int)
  return c
