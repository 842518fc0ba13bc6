"""Shared test setup.

Tests compile many small XLA programs and run tiny ones, so compile time dominates: XLA's backend
optimisation level 0 compiles the tiny MEGAN about 3x faster on the CPU. Subprocesses started by tests
inherit the flags (append to XLA_FLAGS, never replace it).

The runs keep compiled programs in a persistent compilation cache under $XDG_CACHE_HOME (else
~/.cache): the suite points XDG_CACHE_HOME at a folder of its own, removed at exit, so that it never
writes to the user's cache (its subprocesses inherit it). The tests pass with the cache on or off
(`--config.compilation_cache_dir=None`).

A suite started in the background without job control (`cmd &` in a script, some CI launchers)
or under nohup inherits SIGINT or SIGHUP ignored, and the runs (rightly) keep an ignored signal
ignored: the signal tests get the dispositions of a terminal, which their subprocesses inherit.
"""

import atexit
import os
import shutil
import signal
import sys
import tempfile

_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()
_CACHE_HOME = tempfile.mkdtemp(prefix="megan_jax_test_cache_")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, ignore_errors=True)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
  signal.signal(signal.SIGHUP, signal.SIG_DFL)
