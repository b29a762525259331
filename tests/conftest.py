"""The session's shared caches.

One evaluator cache and one persistent JAX compilation cache for the whole session
and the subprocesses it starts: $UNTAPPED_CACHE_DIR when set (CI sets it), else a
folder of the session (shared by pytest-xdist's workers, who wait for one another's
evaluator through its cache lock). A train step, evaluator or bound compiled by one test is then
loaded from disk by the next test, or by a killed-and-restarted run, instead of being
compiled again; loaded executables compute the same bytes, so no test's result moves.
"""

from __future__ import annotations

import os

import jax
import pytest

from untapped_jax import host_memory

# XLA's CPU backend at optimisation level 1: most of the suite's time is compiling many
# small programs once each, not running them. Level 0 (no LLVM optimisation) compiled a
# little faster but ran LLVM-emitted code 2-8x slower (the logistic-regression evaluator
# trained in 46 s against 6 s, a train step in 235 ms against 91 ms); level 1 compiles
# nearly as fast and runs within 10% of the default (docs/benchmarks.md, the test suite).
# The programs compute the same operations; every comparison of bytes in the suite is
# between runs under these same flags, and the numerical tests compare against
# independent references with tolerances.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"


def pytest_configure(config):
  """Before collection imports anything that starts XLA; subprocesses inherit it.
  UNTAPPED_TEST_XLA_FLAGS=default keeps XLA's own optimisation level."""
  del config
  # As the entry points: XLA:CPU's per-execution buffers reused, not mapped anew.
  host_memory.keep_freed_memory()
  if os.environ.get("UNTAPPED_TEST_XLA_FLAGS", "") != "default":
    flags = os.environ.get("XLA_FLAGS", "")
    if TEST_XLA_FLAGS not in flags:
      os.environ["XLA_FLAGS"] = f"{flags} {TEST_XLA_FLAGS}".strip()


@pytest.fixture(scope="session", autouse=True)
def session_caches(tmp_path_factory):
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: one cache for all the workers
    base = base.parent
  root = os.environ.get("UNTAPPED_CACHE_DIR") or str(base / "cache")
  os.environ["UNTAPPED_CACHE_DIR"] = root
  compiled = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(root,
                                                                         "jax_compilation")
  # Two epochs of the MLP evaluator instead of its recipe's 20 (evaluator.py): every
  # test that judges samples still runs the MLP path; none asserts the real one's 98%.
  os.environ.setdefault("UNTAPPED_MLP_EVALUATOR_EPOCHS", "2")
  # The environment carries the settings into subprocesses (kill and CLI tests).
  os.environ.update(JAX_COMPILATION_CACHE_DIR=compiled,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  jax.config.update("jax_compilation_cache_dir", compiled)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  try:  # anything compiled during collection initialised the cache without a folder
    from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
    compilation_cache.reset_cache()
  except (ImportError, AttributeError):
    pass
  yield root
