"""Shared test setup.

Tests compile many small XLA programs and run tiny ones, so compile time dominates: XLA's backend
optimisation level 0 compiles the tiny MEGAN about 3x faster on the CPU. Subprocesses started by tests
inherit the flags (append to XLA_FLAGS, never replace it).
"""

import os
import sys

_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
