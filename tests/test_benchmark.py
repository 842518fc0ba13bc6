"""megan_jax.benchmark: end-to-end on the tiny model, cells from the config, the FLOP plumbing,
OOM handling, isolation, a clean stop on SIGTERM/SIGINT."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from megan_jax import benchmark
from megan_jax.bench import measure, programs
from megan_jax.models import model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RESULT_KEYS = {"mode", "variant", "dtype", "size", "batch", "status", "compile_s", "ms", "times_ms",
               "items_per_s", "flops", "tflops_per_s", "peak_bytes", "peak_source", "device_kind"}


def test_end_to_end_tiny(tmp_path, capsys):
  out = tmp_path / "bench.json"
  report = benchmark.main(["--variants=tiny", "--mode=all", "--sizes=16x16", "--dtypes=float32",
                           "--batch=1", "--crop=8", "--warmup=0", "--repeats=2", "--no-isolate",
                           "--override=use_lmga=false", "--override=attention_impl=full",
                           f"--json={out}"])
  saved = json.loads(out.read_text())
  assert saved["results"] == json.loads(json.dumps(report["results"]))
  for key in ("command", "date", "jax_version", "device_kind", "platform", "results"):
    assert saved[key], key
  assert "--variants=tiny" in saved["command"]
  assert [(r["mode"], r["size"], r["batch"]) for r in saved["results"]] == [
      ("infer", "16x16", 1), ("train", "8x8", 1)]
  for r in saved["results"]:
    assert RESULT_KEYS <= r.keys() and r["status"] == "ok"
    # --repeats=2, but a ceiling ratio takes at least 5 alternating pairs
    assert r["ms"] > 0 and r["compile_s"] > 0 and len(r["times_ms"]) == 5
    assert r["flops"] > 0 and r["tflops_per_s"] > 0 and r["peak_bytes"] > 0
    conv = r["conv3x3"]
    ratios = sorted(r["flops"] * c / (conv["flops"] * t)
                    for t, c in zip(r["times_ms"], conv["times_ms"]))
    assert r["vs_conv3x3"] == pytest.approx(ratios[2])
    assert r["vs_conv3x3_range"] == pytest.approx([ratios[0], ratios[-1]])
  infer, train = saved["results"]
  assert infer["items_per_s"] == pytest.approx(7 * 1e3 / infer["ms"])   # 7 output frames per window
  assert train["items_per_s"] == pytest.approx(1 * 1e3 / train["ms"])   # 1 clip per step
  # A hand-counted floor: the tiny model's 3x3 HR conv (hr_features in and out) at 64x64, 7 frames.
  hr = model_config("tiny").hr_features
  assert infer["flops"] > 2 * 64 * 64 * hr * hr * 9 * 7
  assert "| infer | tiny | float32 | 16x16 | 1 |" in capsys.readouterr().out


def test_cell_and_ceiling_are_timed_in_alternation(monkeypatch):
  """Every timed call of the cell is followed by one of the conv (issue 29): a load that comes and
  goes then weighs on both halves of each ratio."""
  calls = []
  real_call = measure._call
  monkeypatch.setattr(measure, "_call", lambda compiled, args, threads: (
      calls.append(args[0].shape[0]), real_call(compiled, args, threads))[1])
  make = lambda n: programs.Program(jax.jit(lambda x: x * 2), (jnp.ones((n,)),), None, (), 1)
  r = measure.measure(make(1), warmup=1, repeats=3, device_peak=False, ceiling=make(2))
  k = r["conv3x3"]["calls_per_pair"]
  # one warm-up each, one sizing call each, then max(3, 5) pairs of 1 cell call and k conv calls
  assert calls == [1, 2, 1, 2] + ([1] + [2] * k) * 5
  assert len(r["times_ms"]) == len(r["conv3x3"]["times_ms"]) == 5


def test_the_conv_half_of_a_pair_lasts_about_one_cell_call(monkeypatch):
  """A cell call of 40 ms against a conv call of 4 ms: 10 conv calls a pair, their mean timed."""
  monkeypatch.setattr(measure, "_call", lambda compiled, args, threads: (
      time.sleep(0.04 if args[0].shape[0] == 1 else 0.004), args)[1])
  make = lambda n: programs.Program(jax.jit(lambda x: x * 2), (jnp.ones((n,)),), None, (), 1)
  r = measure.measure(make(1), warmup=0, repeats=5, device_peak=False, ceiling=make(2))
  assert 8 <= r["conv3x3"]["calls_per_pair"] <= 11
  assert r["conv3x3"]["ms"] == pytest.approx(4.0, rel=0.5)


def test_flops_of_one_conv_match_the_hand_count():
  h, w, cin, cout = 64, 64, 8, 16
  conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  args = (jnp.ones((1, h, w, cin)), jnp.ones((3, 3, cin, cout)))
  result = measure.measure(programs.Program(conv, args, None, (), items_per_call=1),
                           warmup=1, repeats=2)
  expected = 2 * h * w * cin * cout * 9
  # XLA skips the taps that fall in the zero padding: (1 - 1/64)^2 of the hand count here.
  assert result["flops"] == pytest.approx(expected, rel=0.03)
  assert result["tflops_per_s"] == pytest.approx(result["flops"] / result["ms"] / 1e9)


@pytest.mark.parametrize("mode,passes", [("infer", 1), ("train", 3)])
def test_the_conv_ceiling_is_a_3x3_conv_of_the_model_width(mode, passes):
  """infer: one forward conv; train: forward + the input and kernel gradients, 3 convs' FLOPs."""
  nf, frames, (h, w) = model_config("tiny").nf, 2 * 7, (16, 16)
  cell = programs.Cell(mode, "tiny", "float32", (h, w), 2)
  program = programs.ceiling_program(cell)
  assert program.args[0].shape == (frames, h, w, nf) and program.args[1].shape == (3, 3, nf, nf)
  flops = measure.count_flops(program)
  # XLA skips the taps that fall in the zero padding: (1 - 1/16)^2 of the hand count at 16x16.
  assert flops == pytest.approx(passes * 2 * frames * h * w * nf * nf * 9, rel=0.15)
  assert flops >= passes * 2 * frames * (h - 2) * (w - 2) * nf * nf * 9


def test_flops_only_counts_loops_at_their_trip_count():
  def scanned(cell):  # 7 steps of a (B, 8) @ (8, 8) matmul, in a loop; the twin is unrolled
    x, w = jnp.ones((cell.batch, 8)), jnp.ones((8, 8))
    loop = lambda unroll: jax.jit(lambda a: jax.lax.scan(
        lambda c, _: (c @ w, None), a, None, length=7, unroll=unroll)[0])
    return programs.Program(loop(1), (x,), loop(True), (x,), items_per_call=1)

  report = benchmark.main(["--variants=tiny", "--mode=infer", "--sizes=4x4", "--infer-batch=3",
                           "--dtypes=float32", "--flops-only"],
                          make_programs={"infer": scanned, "train": scanned})
  [r] = report["results"]
  assert r["status"] == "flops-only" and r["flops"] == 7 * 2 * 3 * 8 * 8


def test_total_flops_accepts_dict_list_and_none():
  assert measure.total_flops({"flops": 10.0, "bytes accessed": 3.0}) == 10.0
  assert measure.total_flops([{"flops": 10.0}, {"flops": 5.0}, {}]) == 15.0
  assert measure.total_flops(None) is None
  assert measure.total_flops([{}]) is None


def _fake_programs():
  def out_of_memory(cell):
    raise jax.errors.JaxRuntimeError(
        f"RESOURCE_EXHAUSTED: Out of memory while trying to allocate 99GiB ({cell.name})")

  def small(cell):
    x = jnp.ones((cell.batch, 8))
    return programs.Program(jax.jit(lambda a: a @ a.T), (x,), None, (), items_per_call=1)

  return {"infer": out_of_memory, "train": small}


def test_out_of_memory_is_recorded_and_the_run_goes_on(tmp_path, capsys):
  out, trace = tmp_path / "bench.json", tmp_path / "trace"
  benchmark.main(["--variants=tiny", "--sizes=16x16", "--dtypes=float32", "--batch=2", "--crop=8",
                  "--warmup=0", "--repeats=1", "--no-isolate", f"--json={out}", f"--profile={trace}"],
                 make_programs=_fake_programs())
  infer, train = json.loads(out.read_text())["results"]
  assert infer["status"] == "OOM" and "RESOURCE_EXHAUSTED" in infer["error"]
  assert train["status"] == "ok" and train["ms"] > 0
  assert os.listdir(trace) == ["train-tiny-float32-8x8-b2"]  # profiler trace of the cell that ran
  top = train["profile_top_ops"]
  assert top and all(op["ms_per_step"] > 0 and op["hlo_op"] for op in top)
  assert any("dot" in op["op_name"] for op in top)  # the matmul, named by its JAX op path
  assert "| infer | tiny | float32 | 16x16 | 1 | OOM |" in capsys.readouterr().out


@pytest.mark.parametrize("limit", ["time-budget", "deadline"])
def test_time_limits_skip_the_cells_that_would_not_fit(limit, tmp_path, capsys):
  def slow(cell):
    time.sleep(0.5)
    x = jnp.ones((cell.batch, 8))
    return programs.Program(jax.jit(lambda a: a @ a.T), (x,), None, (), items_per_call=1)

  out = tmp_path / "bench.json"
  benchmark.main(["--variants=tiny", "--sizes=16x16", "--dtypes=float32", "--batch=1", "--crop=8",
                  "--warmup=0", "--repeats=1", "--no-isolate", f"--json={out}",
                  "--time-budget=0.8" if limit == "time-budget" else f"--deadline={time.time() + 0.8}"],
                 make_programs={"infer": slow, "train": slow})
  saved = json.loads(out.read_text())
  infer, train = saved["results"]
  assert saved["complete"] and infer["status"] == "ok"
  assert train["status"] == "skipped" and f"--{limit}=" in train["error"]
  assert "| train | tiny | float32 | 8x8 | 1 | skipped |" in capsys.readouterr().out


def test_a_passed_deadline_starts_no_cell(tmp_path, capsys):
  out = tmp_path / "bench.json"
  benchmark.main(["--variants=tiny", "--sizes=16x16", "--dtypes=float32", "--batch=1", "--crop=8",
                  "--no-isolate", f"--deadline={time.time() - 1}", f"--json={out}"],
                 make_programs=_fake_programs())
  assert [r["status"] for r in json.loads(out.read_text())["results"]] == ["skipped", "skipped"]
  assert "no cell ran, JAX" in capsys.readouterr().out


def test_json_keeps_the_finished_cells_of_an_interrupted_run(tmp_path, capsys):
  def interrupted(cell):
    raise KeyboardInterrupt  # Ctrl-C while the train cell is built

  out = tmp_path / "bench.json"
  with pytest.raises(SystemExit) as info:
    benchmark.main(["--variants=tiny", "--sizes=16x16", "--dtypes=float32", "--batch=1",
                    "--crop=8", "--warmup=0", "--repeats=1", "--no-isolate", f"--json={out}"],
                   make_programs={**_fake_programs(), "train": interrupted})
  assert info.value.code == 128 + signal.SIGINT
  saved = json.loads(out.read_text())
  assert not saved["complete"] and saved["stopped_by"] == "SIGINT"
  assert [(r["mode"], r["status"]) for r in saved["results"]] == [("infer", "OOM")]
  assert "stopped by SIGINT after 1 of 2 cells" in capsys.readouterr().out


def _children(pid: int) -> list[int]:
  with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as f:
    return [int(c) for c in f.read().split()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_and_its_cell_subprocess(signum, tmp_path):
  """Each cell in its own process: the first finishes (its figures are printed at once), the
  signal comes while the second runs; the run ends, the second's process with it."""
  out = tmp_path / "bench.json"
  cmd = [sys.executable, "-m", "megan_jax.benchmark", "--variants=tiny", "--mode=all",
         "--sizes=8x8", "--dtypes=float32", "--batch=1", "--crop=8", "--warmup=0", "--repeats=1",
         "--override=use_lmga=false", "--override=attention_impl=full", f"--json={out}"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  try:
    first = proc.stdout.readline()  # printed when the infer cell has finished
    assert first.startswith("[benchmark] infer-tiny-float32-8x8-b1: ") and " ms, " in first, (
        first + proc.stderr.read()[-3000:])
    deadline = time.time() + 60
    while not (children := _children(proc.pid)):
      assert time.time() < deadline and proc.poll() is None, "the train cell did not start"
      time.sleep(0.05)
    proc.send_signal(signum)
    rest, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signum, err[-3000:]
  name = signal.Signals(signum).name
  assert "stopped by " + name + " after 1 of 2 cells" in rest
  assert err.strip().splitlines()[-1] == (
      f"megan_jax.benchmark: stopped by {name}; wrote the finished cells to {out}")
  saved = json.loads(out.read_text())
  assert not saved["complete"] and saved["stopped_by"] == name
  assert [(r["mode"], r["status"]) for r in saved["results"]] == [("infer", "ok")]
  for child in children:  # reaped by the run: no orphan left
    assert not os.path.exists(f"/proc/{child}"), f"cell subprocess {child} still runs"


def test_cells_come_from_the_config(tmp_path):
  """Batch, crop and frame count are the variant config's, not the benchmark's own numbers."""
  config_file = tmp_path / "five_frames.py"
  vimeo = os.path.join(REPO, "configs", "vimeo.py")
  config_file.write_text(
      "import importlib.util\n"
      f"spec = importlib.util.spec_from_file_location('vimeo', {vimeo!r})\n"
      "vimeo = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(vimeo)\n"
      "def get_config(arg):\n"
      "  c = vimeo.get_config(arg)\n"
      "  c.data.num_input_frames, c.data.crop, c.batch_size, c.eval.batch_size = 5, 12, 3, 2\n"
      "  return c\n")
  args = benchmark.parse_args(["--variants=tiny", "--sizes=8x8", "--dtypes=float32",
                               f"--config={config_file}"])
  infer, train = benchmark.plan(args)
  assert (infer.batch, train.batch, train.size) == (2, 3, (12, 12))
  program = programs.infer_program(infer)
  assert program.args[1].shape == (2, 5, 8, 8, 3) and program.items_per_call == 2 * 9
  default = benchmark.plan(benchmark.parse_args(["--variants=tiny", "--sizes=8x8",
                                                 "--dtypes=float32"]))
  with open(os.path.join(REPO, "configs", "vimeo.py"), encoding="utf-8") as f:
    paper = f.read()  # the paper setting, read independently of the loader
  assert "c.batch_size = 16" in paper and "c.data.crop = 32" in paper
  assert (default[1].batch, default[1].size) == (16, (32, 32))


def test_is_oom():
  assert measure.is_oom(MemoryError())
  assert measure.is_oom(RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory"))
  assert not measure.is_oom(ValueError("frame size 15x16 is not a multiple of 4"))


def test_isolated_cell_reports_errors_from_its_subprocess():
  cell = programs.Cell("infer", "tiny", "float32", (8, 8), 1, (("no_such_field", 1),))
  record = measure.run_cell_isolated(cell, warmup=0, repeats=1, profile_dir=None)
  assert record["status"] == "error" and "no_such_field" in record["error"]
  assert record["overrides"] == {"no_such_field": 1}


def test_bad_flags_name_the_flag():
  with pytest.raises(SystemExit, match="--variants"):
    benchmark.main(["--variants=huge", "--no-isolate"])
  with pytest.raises(SystemExit, match="--sizes"):
    benchmark.main(["--sizes=15x16", "--no-isolate"])
  assert benchmark.parse_override("scan_unroll=7") == ("scan_unroll", 7)
  assert benchmark.parse_override("use_lmga=false") == ("use_lmga", False)
  assert benchmark.parse_override("attention_impl=cudnn") == ("attention_impl", "cudnn")
