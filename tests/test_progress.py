"""progress: rates and ETAs count from a bar's creation, durations, notes above bars."""

import pytest
import tqdm.std

from megan_jax import progress


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self) -> float:
    return self.now


def test_speed_counts_from_the_bar_not_from_the_initial_units(monkeypatch):
  clock = Clock()
  monkeypatch.setattr(tqdm.std, "time", clock)
  bar = progress.bar(10, "t", unit="step", initial=4, shown=False)  # 4 done before (a compile)
  assert progress.speed(bar) == {}
  clock.now += 2.0
  bar.update(3)
  speed = progress.speed(bar)
  assert speed["per_sec"] == pytest.approx(3 / 2.0)      # 3 steps in 2 s, not 7
  assert speed["eta_sec"] == pytest.approx((10 - 7) / 1.5)
  bar.close()


@pytest.mark.parametrize("seconds, text", [(0, "0m00s"), (59.6, "1m00s"), (125, "2m05s"),
                                           (3723, "1h02m03s"), (float("inf"), "?")])
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text


def test_compiling_notes_before_and_after(capsys):
  with progress.compiling("the thing"):
    print("inside")
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "compiling the thing (first time takes minutes on a CPU)"
  assert lines[1] == "inside"
  assert lines[2] == "compiled the thing and ran it once in 0m00s"
