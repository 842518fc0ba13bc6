"""The persistent compilation cache: on by default in the user's cache folder, off with None, and
the compile line says when a program came from it."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache

import train_fakes
from megan_jax import paths, progress, train


def test_default_location_follows_xdg(monkeypatch, tmp_path):
  home = str(tmp_path / "home")
  monkeypatch.setenv("HOME", home)
  monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/me")
  assert paths.default_cache_dir() == "/var/cache/me/megan_jax"
  sys.path.insert(0, train_fakes.REPO)
  from configs import vimeo  # pylint: disable=import-outside-toplevel
  assert vimeo.get_config().compilation_cache_dir == "/var/cache/me/megan_jax"
  for unset in ("", "relative/cache"):  # the XDG rule: an empty or relative value is ignored
    monkeypatch.setenv("XDG_CACHE_HOME", unset)
    assert paths.default_cache_dir() == home + "/.cache/megan_jax"
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert paths.default_cache_dir() == home + "/.cache/megan_jax"


@pytest.fixture
def jax_cache_state():
  """Restores JAX's cache settings and state after the test (they are process-wide)."""
  saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                              "jax_persistent_cache_min_compile_time_secs")}
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def _compile_lines(capsys, fn, x):
  with progress.compiling("f"):
    jax.block_until_ready(jax.jit(fn)(x))
  return [l for l in capsys.readouterr().out.splitlines() if l.startswith("compiled f")]


def test_second_compile_loads_from_the_cache_and_none_turns_it_off(tmp_path, capsys,
                                                                   jax_cache_state):
  cache = str(tmp_path / "cache")
  train.setup_runtime(train_fakes.fast_config("tiny", "/unused", compilation_cache_dir=cache))
  assert jax.config.jax_compilation_cache_dir == cache
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # JAX keeps programs of > 1 s
  fn = lambda x: jnp.sin(x) * 3.0 + jnp.cumsum(x)  # a program no other test compiles
  x = jnp.arange(7.0) / 13.0
  first = _compile_lines(capsys, fn, x)
  assert len(first) == 1 and f"saved in the compilation cache {cache}" in first[0], first
  assert os.listdir(cache)  # what JAX wrote
  jax.clear_caches()  # in-memory compilations gone: the next call reads the persistent cache
  second = _compile_lines(capsys, fn, x)
  assert len(second) == 1 and second[0].endswith(f"loaded from the compilation cache {cache}"), second

  train.setup_runtime(train_fakes.fast_config("tiny", "/unused", compilation_cache_dir=None))
  assert jax.config.jax_compilation_cache_dir is None
  jax.clear_caches()
  off = _compile_lines(capsys, fn, x)
  assert len(off) == 1 and "cache" not in off[0], off
