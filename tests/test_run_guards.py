"""What a training run never does to a workdir: start from parameters that do not fit (and leave
them behind), share it with another training, rewrite its recorded config, truncate its logs."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import train_fakes
from megan_jax import checkpointing, logging_utils, pretrained, train, workdir_lock


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_fakes.make_vimeo_tree(str(tmp_path_factory.mktemp("vimeo")), num_clips=4)


def _demo_config():
  sys.path.insert(0, train_fakes.REPO)
  from configs import demo  # pylint: disable=import-outside-toplevel
  return demo.get_config()


def test_pretrained_that_does_not_fit_is_refused_before_anything_is_written(data_root, tmp_path):
  config = train_fakes.fast_config("tiny", data_root, num_steps=1)
  workdir = str(tmp_path / "run")
  wrong = str(tmp_path / "wrong.npz")  # the toy model is 8 wide: Conv_0/kernel (3, 3, 3, 8)
  pretrained.save(wrong, {"Conv_0": {"kernel": np.zeros((3, 3, 3, 5), np.float32)}}, {})
  config.pretrained = wrong
  for _ in range(2):  # a rerun meets the same file, not a checkpoint made of it
    with pytest.raises(checkpointing.ArchitectureError) as info:
      train.train_and_evaluate(config, workdir, train_fakes.ToyModel())
    message = str(info.value)
    assert message.startswith(f"config.pretrained: {wrong} does not fit config.model (4 differ: ")
    assert "Conv_0/kernel: (3, 3, 3, 5) in the file, (3, 3, 3, 8) in the config" in message
    assert "Conv_1/kernel: absent in the file, (3, 3, 32, 336) in the config" in message
    assert message.endswith(f"Nothing was written to {workdir}") and "\n" not in message
    assert not checkpointing.has_checkpoints(workdir)

  # demo_small in the tiny config's model: the message names the config whose model it is
  tiny = train_fakes.fast_config("tiny", data_root, pretrained="demo_small")
  with pytest.raises(checkpointing.ArchitectureError) as info:
    pretrained.start_workdir(tiny, workdir)
  message = str(info.value)
  assert "demo_small (" in message
  assert "use --config=configs/demo.py with its model fields (--config.model." in message
  demo_model = _demo_config().model
  named = dict(re.findall(r"--config\.model\.(\w+)=([^\s)]+)", message))
  assert named["nf"] == str(demo_model.nf) == "32"
  assert all(str(demo_model[k]) == v and tiny.model[k] != demo_model[k]
             for k, v in named.items())
  assert not checkpointing.has_checkpoints(workdir)
  demo = _demo_config()  # ... and in configs/demo.py's model it fits
  assert pretrained.start_workdir(demo, workdir, announce=False).startswith(
      "the parameters demo_small (6000 steps of configs/pretrain.py, then 5000 of "
      "configs/pretrain_more.py, then 5000 of configs/pretrain_downscaled.py)")
  assert checkpointing.make_manager(workdir, create=False).all_steps() == [0]


def _hold_lock(workdir: str) -> subprocess.Popen:
  """Another process holding WORKDIR/.lock with a plain flock, as a running training does."""
  os.makedirs(workdir, exist_ok=True)
  code = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX);"
          " f.write(str(os.getpid())); f.flush(); print('locked', flush=True); time.sleep(120)")
  child = subprocess.Popen([sys.executable, "-c", code,
                            os.path.join(workdir, workdir_lock.LOCK_NAME)],
                           stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == "locked"
  return child


def test_a_busy_workdir_is_refused_and_a_killed_run_leaves_no_lock(data_root, tmp_path, capsys):
  config = train_fakes.fast_config("tiny", data_root, num_steps=2)
  toy = train_fakes.ToyModel()
  workdir = str(tmp_path / "run")
  start = str(tmp_path / "start.npz")
  pretrained.save(start, jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype),
                                      pretrained.expected_params(config, toy)), {})
  config.pretrained = start
  holder = _hold_lock(workdir)
  try:
    busy = (f"--workdir: {workdir} is in use by another training run (PID {holder.pid}, lock "
            f"file {os.path.join(workdir, workdir_lock.LOCK_NAME)}); wait for it to end or stop it "
            f"(kill {holder.pid}), or choose another --workdir")
    with pytest.raises(workdir_lock.WorkdirBusyError) as info:
      train.train_and_evaluate(config, workdir, toy)
    assert str(info.value) == busy
    with pytest.raises(workdir_lock.WorkdirBusyError):  # eval/infer's step 0 is not written either
      pretrained.start_workdir(config, workdir, pretrained.expected_params(config, toy))
    assert not os.path.exists(checkpointing.checkpoint_dir(workdir))
  finally:
    holder.kill()  # as kill -9 would: the kernel drops its lock, its file stays
    holder.wait()
  capsys.readouterr()
  train.train_and_evaluate(config, workdir, toy)
  starting = [line for line in capsys.readouterr().out.splitlines() if line.startswith("starting")]
  assert starting == [f"starting {workdir} from the parameters {start} with a fresh optimiser "
                      f"state and data order"]  # one line, naming the source
  assert workdir_lock.LOCK_NAME not in os.listdir(workdir)  # removed by a run that ends
  holder = _hold_lock(workdir)
  try:  # a workdir being trained can be read
    assert checkpointing.restore_params(workdir)[1] == 2
  finally:
    holder.kill()
    holder.wait()


def _config_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def test_changed_configs_and_logs_of_a_deleted_run_are_kept(data_root, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  toy = train_fakes.ToyModel()
  train.train_and_evaluate(train_fakes.fast_config("tiny", data_root, num_steps=2), workdir, toy)
  changed = train_fakes.fast_config("tiny", data_root, num_steps=4, batch_size=2)
  capsys.readouterr()
  train.train_and_evaluate(changed, workdir, toy)  # resumes at step 2 with another batch size
  out = capsys.readouterr().out
  first, second = (os.path.join(workdir, n) for n in ("config.json", "config.1.json"))
  assert (f"the config differs from {first}: batch_size (4 -> 2), num_steps (2 -> 4); recorded it "
          f"as {second}") in out
  assert (_config_json(first)["batch_size"], _config_json(first)["num_steps"]) == (4, 2)
  assert (_config_json(second)["batch_size"], _config_json(second)["num_steps"]) == (2, 4)
  train.train_and_evaluate(changed, workdir, toy)  # the same config again: nothing new recorded
  assert not os.path.exists(os.path.join(workdir, "config.2.json"))

  with open(os.path.join(workdir, logging_utils.JSONL_NAME), encoding="utf-8") as f:
    earlier_log = f.read()
  assert [r["step"] for r in logging_utils.read_jsonl(workdir)] == [1, 2, 3, 4]
  shutil.rmtree(checkpointing.checkpoint_dir(workdir))
  capsys.readouterr()
  train.train_and_evaluate(changed, workdir, toy)  # from scratch: the earlier log is moved aside
  aside = os.path.join(workdir, logging_utils.EARLIER_RUN_DIR)
  assert (f"{os.path.join(workdir, logging_utils.JSONL_NAME)} logs steps 1-4 of an earlier run, "
          f"but {checkpointing.checkpoint_dir(workdir)} holds no checkpoint of it: moved ") in (
              capsys.readouterr().out)
  with open(os.path.join(aside, logging_utils.JSONL_NAME), encoding="utf-8") as f:
    assert f.read() == earlier_log
  assert _config_json(os.path.join(aside, "config.json"))["batch_size"] == 4
  assert _config_json(os.path.join(aside, "config.1.json"))["batch_size"] == 2
  assert [r["step"] for r in logging_utils.read_jsonl(workdir)] == [1, 2, 3, 4]
  assert _config_json(first)["batch_size"] == 2 and not os.path.exists(second)


def test_training_history_reads_the_started_from_chain():
  """A parameter file's history, hand-written: stages earliest first, one config or several."""
  one = {"steps": 750, "config_file": "c.py", "started_from": {"steps": 1200, "config_file": "c.py"}}
  assert pretrained.training(one) == "1200 + 750 steps of c.py"
  two = {"steps": 60, "config_file": "d.py", "started_from": one}
  assert pretrained.training(two) == "1200 steps of c.py, then 750 of c.py, then 60 of d.py"
  assert pretrained.training({"steps": 5, "config_file": "c.py"}) == "5 steps of c.py"
