"""Shared test setup.

Tests compile many small XLA programs and run tiny ones, so compile time dominates: XLA's backend
optimisation level 0 compiles the tiny MEGAN about 3x faster on the CPU. Subprocesses started by tests
inherit the flags (append to XLA_FLAGS, never replace it).

A suite started in the background without job control (`cmd &` in a script, some CI launchers)
or under nohup inherits SIGINT or SIGHUP ignored, and the runs (rightly) keep an ignored signal
ignored: the signal tests get the dispositions of a terminal, which their subprocesses inherit.
"""

import os
import signal
import sys

_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
  signal.signal(signal.SIGHUP, signal.SIG_DFL)
