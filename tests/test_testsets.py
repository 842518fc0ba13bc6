"""Table 1 test sets from one config field each: specs, natural frame order, the table's columns."""

import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import train_fakes
from megan_jax import checkpointing, evaluate, predict
from megan_jax.data import testsets
from megan_jax.data.pipeline import open_eval_dataset
from megan_jax.data.vimeo import read_list

VID4_NAMES = {"calendar": "Frame {}.png", "city": "im{}.png", "foliage": "Frame {:03d}.png",
              "walk": "{}.png"}


def _save(path, rng, h=32, w=48):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  """Tiny Vid4 (11 frames a sequence, names of four styles, plus a folder that is not Vid4),
  Vimeo (every clip of the Fast/Medium/Slow lists, all links to one clip) and Adobe240 trees."""
  base = tmp_path_factory.mktemp("sets")
  rng = np.random.default_rng(0)
  for seq, pattern in VID4_NAMES.items():
    for t in range(1, 12):
      _save(str(base / "vid4" / seq / pattern.format(t)), rng)
  _save(str(base / "vid4" / "BIx4" / "a.png"), rng)
  clip = base / "one_clip"
  for t in range(1, 8):
    _save(str(clip / f"im{t}.png"), rng)
  for subset in ("fast", "medium", "slow"):
    for name in read_list(subset):
      link = base / "vimeo" / "sequences" / name
      if not link.exists():
        os.makedirs(link.parent, exist_ok=True)
        os.symlink(clip, link)
  for t in range(7):
    _save(str(base / "adobe" / "clip_a" / f"{t:05d}.png"), rng)
  return {k: str(base / k) for k in ("vid4", "vimeo", "adobe")}


def _eval_config(**fields):
  ev = ml_collections.ConfigDict({"vid4": None, "vimeo": None, "adobe": None, "folders": None,
                                  "folders_name": None, "datasets": []})
  ev.update(fields)
  return ev


def test_specs_in_table1_order_then_any_folder(roots):
  specs = testsets.root_specs(_eval_config(adobe=roots["adobe"], vimeo=roots["vimeo"],
                                           vid4=roots["vid4"], folders=roots["vid4"]))
  assert [evaluate.dataset_name(s) for s in specs] == [
      "Vid4", "Vimeo-Fast", "Vimeo-Medium", "Vimeo-Slow", "Adobe240", "vid4"]
  assert [s.field for s in specs] == ["config.eval.vid4"] + ["config.eval.vimeo"] * 3 + [
      "config.eval.adobe", "config.eval.folders"]
  assert [s.get("list_file") for s in specs[1:4]] == ["fast", "medium", "slow"]
  named = testsets.root_specs(_eval_config(folders=roots["adobe"], folders_name="Mine"))
  assert [evaluate.dataset_name(s) for s in named] == ["Mine"]
  assert [s.name for s in testsets.root_specs(_eval_config(adobe=roots["adobe"]))] == ["Adobe240"]
  assert testsets.root_specs(_eval_config()) == []
  with pytest.raises(FileNotFoundError, match=r"config.eval.vid4: /no/Vid4 does not exist; "
                     r"expected ROOT/calendar, city, foliage, walk"):
    testsets.root_specs(_eval_config(vid4="/no/Vid4"))


def test_vid4_is_its_four_sequences_in_natural_frame_order(roots):
  (spec,) = testsets.root_specs(_eval_config(vid4=roots["vid4"]))
  sequences = open_eval_dataset(spec)
  assert [s.name for s in sequences] == ["calendar", "city", "foliage", "walk"]  # not BIx4
  for seq in sequences:
    assert seq.files == [VID4_NAMES[seq.name].format(t) for t in range(1, 12)]  # 2 before 10


def test_evaluate_prints_the_table_in_paper_order_with_progress(roots, tmp_path, monkeypatch,
                                                                capsys):
  monkeypatch.setattr(predict, "build_model", lambda config: train_fakes.ToyModel())
  params = jax.jit(lambda: train_fakes.ToyModel().init(
      jax.random.key(0), jnp.zeros((1, 4, 8, 8, 3)))["params"])()
  workdir = str(tmp_path / "w")
  checkpointing.save_params(workdir, params)
  config = train_fakes.fast_config("tiny", roots["vimeo"])
  config.model.name = "toy"
  config.eval.update(dict(vid4=roots["vid4"], vimeo=roots["vimeo"], adobe=roots["adobe"],
                          max_clips=1, save_crops=False, progress=True))
  out = evaluate.evaluate(config, workdir)
  captured = capsys.readouterr()
  header = next(l for l in captured.out.splitlines() if l.startswith("Method")).split()
  assert header == ["Method", "Vid4", "Vimeo-Fast", "Vimeo-Medium", "Vimeo-Slow", "Adobe240"]
  assert list(out["summary"]["TOY"]) == header[1:]
  for name, frames in zip(header[1:], [11, 7, 7, 7, 7]):  # one clip each (max_clips=1)
    assert re.search(rf"{name} TOY: 100%.* {frames}/{frames} ", captured.err)
    assert re.search(rf"{name} {re.escape(evaluate.BASELINE)}: 100%.* {frames}/{frames} ",
                     captured.err)
  # The Vimeo columns read the same clip (all links): equal scores, and so are the baseline's.
  fast, medium = out["summary"][evaluate.BASELINE]["Vimeo-Fast"], out["summary"][
      evaluate.BASELINE]["Vimeo-Medium"]
  assert fast == medium
