"""The edges of issue 30: concurrent runs on one workdir, non-finite starts, signals in windows
where they cannot be acted on at once, sizes the model cannot index. Each test states the
user-visible outcome: what is on disk, the one line printed, the exit status."""

import json
import os

from megan_jax import report


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
