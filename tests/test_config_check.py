"""config_check: each value a run cannot use is refused before any work, in one line naming the
field and the values it allows; the shipped configs pass."""

import os
import re
import subprocess
import sys

import pytest

import train_fakes
from configs import demo, pretrain, pretrain_downscaled, pretrain_more, vimeo  # the repository root is on the path (conftest.py)
from megan_jax import config_check

# (field, bad value, the allowed values as the message must say them): written by hand from the
# field's meaning (configs/vimeo.py, megan_jax/models/configs.py), not from the code's output.
BAD = [
    ("checkpoint_every", 0, "an integer >= 1"),
    ("log_every", 0, "an integer >= 1"),
    ("keep_checkpoints", 0, "an integer >= 1 (0 would discard every checkpoint)"),
    ("eval_every", -1, "an integer >= 0 (0 turns validation off)"),
    ("num_steps", 0, "an integer >= 1"),
    ("batch_size", 0, "an integer >= 1"),
    ("seed", -1, "an integer >= 0"),
    ("data.crop", 0, "an integer >= 4, a multiple of 4 (the feature pyramid halves twice; "
                     "model.nlrb_block=2)"),
    ("data.crop", 30, "a multiple of 4"),
    ("data.num_input_frames", 1, "an integer >= 2"),
    ("data.workers", -1, "an integer >= 0 (0: in the main process)"),
    ("data.read_threads", 0, "an integer >= 1"),
    ("optimizer.lr", -1e-3, "a number > 0 (a negative one trains by gradient ascent)"),
    ("optimizer.lr", 0.0, "a number > 0"),
    ("optimizer.lr", float("nan"), "a number > 0"),
    ("optimizer.min_lr", 1.0, "a number in [0, config.optimizer.lr=0.0001]"),
    ("optimizer.cycle_steps", 0, "an integer >= 1"),
    ("optimizer.restarts", -1, "an integer >= 0, or None"),
    ("optimizer.b1", 1.0, "a number in [0, 1)"),
    ("optimizer.b2", -0.5, "a number in [0, 1)"),
    ("loss_eps", 0.0, "a number > 0"),
    ("val.max_clips", 0, "an integer >= 1, or None"),
    ("eval.batch_size", 0, "an integer >= 1"),
    ("eval.step", -2, "an integer >= 0, or None"),
    ("eval.max_clips", 0, "an integer >= 1, or None"),
    ("eval.tile", 0, "an integer >= 4, a multiple of 4"),
    ("eval.tile", 18, "a multiple of 4"),
    ("eval.tile_overlap", 6, "a multiple of 4"),
    ("eval.dtype", "bogus", "one of (None, 'float32', 'bfloat16')"),
    ("export.step", -1, "an integer >= 0, or None"),
    ("infer.step", -1, "an integer >= 0, or None"),
    ("infer.tile", 2, "an integer >= 4"),
    ("infer.tile_overlap", -4, "an integer >= 0"),
    ("infer.fps", -5.0, "a number > 0, or None"),
    ("infer.fps", 0.0, "a number > 0, or None"),
    ("infer.dtype", "float16", "one of (None, 'float32', 'bfloat16')"),
    ("distributed.num_processes", 0, "an integer >= 1, or None"),
    ("model.nf", 0, "an integer >= 1, a multiple of model.groups=8"),
    ("model.nf", 12, "a multiple of model.groups=8"),
    ("model.groups", 0, "an integer >= 1"),
    ("model.front_convs", -1, "an integer >= 0"),
    ("model.nlrb_embed", 0, "an integer >= 1"),
    ("model.nlrb_chunk", 0, "an integer >= 1"),
    ("model.scan_unroll", 0, "an integer >= 1"),
    ("model.lmga_tau", 0, "an integer >= 1"),
    ("model.lmga_layers", 0, "an integer >= 1"),
    ("model.pfrdb_slope", -0.2, "a number >= 0"),
    ("model.back_rbs", -1, "an integer >= 0"),
    ("model.hr_features", 0, "an integer >= 1"),
]


def _set(config, field, value):
  *parents, leaf = field.split(".")
  for name in parents:
    config = config[name]
  config[leaf] = value


@pytest.mark.parametrize("field, value, allowed", BAD, ids=[f"{f}={v}" for f, v, _ in BAD])
def test_each_bad_value_is_one_line_naming_the_field(field, value, allowed):
  config = vimeo.get_config()
  _set(config, field, value)
  with pytest.raises(ValueError) as info:
    config_check.check(config)
  message = str(info.value)
  assert message.startswith(f"config.{field}: {value!r}; expected "), message
  assert allowed in message and "\n" not in message, message


def test_dependent_bounds():
  config = vimeo.get_config()
  config.eval.tile, config.eval.tile_overlap = 16, 16  # overlap < tile, in steps of 4
  with pytest.raises(ValueError, match=re.escape("config.eval.tile_overlap: 16; expected an "
                                                 "integer in [0, config.eval.tile - 4 = 12]")):
    config_check.check(config)
  config.eval.tile_overlap = 12
  config.distributed.num_processes, config.distributed.process_id = 2, 2
  with pytest.raises(ValueError, match=r"config\.distributed\.process_id: 2; expected an integer "
                     r"in \[0, config\.distributed\.num_processes - 1\]"):
    config_check.check(config)
  config.distributed.process_id = 1
  config.model.nlrb_block = 8  # the NLRB's space-to-depth: crops and tiles in multiples of 8
  config.data.crop = 36
  with pytest.raises(ValueError, match=r"config\.data\.crop: 36; .*a multiple of 8"):
    config_check.check(config)
  config.data.crop, config.model.use_nlrb = 36, False  # without NLRBs, multiples of 4 do
  config_check.check(config)


def test_model_choices_are_the_models_own_check():
  config = vimeo.get_config()
  config.model.dtype = "bogus"
  with pytest.raises(ValueError, match=r"^config\.model\.dtype='bogus'; expected one of "
                     r"\('float32', 'bfloat16'\)$"):
    config_check.check(config)


def test_none_only_where_a_field_documents_it():
  config = vimeo.get_config()
  for field in ("eval.step", "eval.tile", "infer.fps", "optimizer.restarts", "eval.dtype"):
    _set(config, field, None)
  config_check.check(config)
  config.data.crop = None
  with pytest.raises(ValueError, match=r"config\.data\.crop: None; expected an integer >= 4"):
    config_check.check(config)


@pytest.mark.parametrize("make", [
    *[lambda v=v: vimeo.get_config(v) for v in (None, "no_lmga", "no_nlrb", "zsm", "small",
                                                "tiny")],
    demo.get_config, pretrain.get_config, pretrain_more.get_config, pretrain_downscaled.get_config,
    lambda: train_fakes.fast_config("tiny", "data"),
], ids=["vimeo", "no_lmga", "no_nlrb", "zsm", "small", "tiny", "demo", "pretrain", "pretrain_more",
        "pretrain_downscaled", "test_fakes"])
def test_shipped_configs_pass(make):
  config_check.check(make())


def test_demo_prescale_factors_are_checked():
  config = demo.get_config()
  config.data.prescale.bikes = 0
  with pytest.raises(ValueError, match=r"^config\.data\.prescale\.bikes: 0; expected an integer "
                     r">= 1$"):
    config_check.check(config)


def test_stills_scales_are_checked():
  config = demo.get_config()
  config.data.stills_scales = (1, 0)
  with pytest.raises(ValueError, match=r"^config\.data\.stills_scales\.1: 0; expected an integer "
                     r">= 1$"):
    config_check.check(config)


def test_main_refuses_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "megan_jax.main", "--config=configs/vimeo.py:tiny",
                         f"--workdir={workdir}", "--config.keep_checkpoints=0"],
                        cwd=train_fakes.REPO, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "megan_jax: error: config.keep_checkpoints: 0; expected an integer >= 1 (0 would discard "
      "every checkpoint)"]
  assert not os.path.exists(workdir)
  assert not os.path.exists(workdir)
