"""The edges of issue 30: concurrent runs on one workdir, non-finite starts, signals in windows
where they cannot be acted on at once, sizes the model cannot index. Each test states the
user-visible outcome: what is on disk, the one line printed, the exit status."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fakes
from megan_jax import checkpointing, pretrained, report, train

MODEL = train_fakes.ToyModel()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_fakes.make_vimeo_tree(str(tmp_path_factory.mktemp("vimeo")), num_clips=4)


def test_two_evals_of_one_step_keep_both_columns(tmp_path):
  """Two evals of one checkpoint started together (other test sets) each read the table before
  either wrote it: the second to write keeps the first's column."""
  mean = lambda v: {"psnr_y": v, "ssim_y": 0.5, "psnr_rgb": v}
  a, b = report.StepTable(str(tmp_path), 7), report.StepTable(str(tmp_path), 7)
  a.add("setA", {"root": "/a"}, {"MEGAN": mean(30.0), "Bicubic+blending": mean(25.0)})
  b.add("setB", {"root": "/b"}, {"MEGAN": mean(31.0), "Bicubic+blending": mean(26.0)})
  a.write()
  b.write()
  with open(tmp_path / "summary.json", encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["summary"]["MEGAN"] == {"setA": mean(30.0), "setB": mean(31.0)}
  assert set(saved["sources"]) == {"setA", "setB"}
  table = (tmp_path / "table.txt").read_text()
  assert "setA" in table and "setB" in table and "30.00/0.5000" in table
  assert sorted(os.listdir(tmp_path)) == ["summary.json", "table.md", "table.txt"]


def test_non_finite_pretrained_is_refused_before_anything_is_written(data_root, tmp_path):
  """Right shapes, NaN values: refused in one line naming the file, and the workdir is not
  poisoned (a rerun with a good file starts)."""
  config = train_fakes.fast_config("tiny", data_root, num_steps=1)
  workdir = str(tmp_path / "run")
  good = jax.jit(lambda: MODEL.init({"params": jax.random.key(0), "lmga": jax.random.key(1)},
                                    jnp.zeros((1, 4, 8, 8, 3)))["params"])()
  bad = str(tmp_path / "nan.npz")
  pretrained.save(bad, jax.tree.map(lambda x: np.full(x.shape, np.nan, np.float32), good), {})
  config.pretrained = bad
  with pytest.raises(ValueError) as info:
    train.train_and_evaluate(config, workdir, MODEL)
  message = str(info.value)
  assert message.startswith(f"config.pretrained: {bad} holds NaN or Inf in 4 of its 4 arrays")
  assert message.endswith(f"Nothing was written to {workdir}") and "\n" not in message
  assert not checkpointing.has_checkpoints(workdir)
  config.pretrained = str(tmp_path / "good.npz")
  pretrained.save(config.pretrained, good, {})
  train.train_and_evaluate(config, workdir, MODEL)
  assert checkpointing.saved_steps(checkpointing.checkpoint_dir(workdir)) == [0, 1]
