"""JAX's persistent compilation cache, on by default for the command-line entry points.

A second process with the same shapes (a sweep's next population, a resumed run, a
rerun after a kill, the test suite's subprocesses) then loads its compiled programs
from disk instead of compiling them again. The cache lives beside the evaluators, in
$UNTAPPED_CACHE_DIR (default ~/.cache/untapped_jax), under jax_compilation/.
UNTAPPED_COMPILATION_CACHE=DIR puts it elsewhere and UNTAPPED_COMPILATION_CACHE=off
turns it off; a cache folder already set through JAX (JAX_COMPILATION_CACHE_DIR or
jax.config) is left as it is. XLA:CPU checks the host's CPU features when it loads an
entry and recompiles on a mismatch, so a folder shared between machines is safe.
"""

from __future__ import annotations

import os

import jax

ENV_VAR = "UNTAPPED_COMPILATION_CACHE"
CACHE_ROOT_ENV_VAR = "UNTAPPED_CACHE_DIR"
OFF = ("off", "0", "false", "none")


def cache_root() -> str:
  """The project's cache folder: $UNTAPPED_CACHE_DIR, else ~/.cache/untapped_jax."""
  return os.environ.get(CACHE_ROOT_ENV_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "untapped_jax")


def enable(*, min_compile_time_s: float = 0.0) -> str | None:
  """Turns the persistent cache on (see the module doc); returns its folder, or None
  when it is off. Programs that compile in less than `min_compile_time_s` are not kept.

  Every program is kept by default, not only JAX's default of those over 1 s: a run also
  compiles some 140 small programs (eager ops of the evaluation, 30-50 ms each), which
  a warm cache reads back in a few ms apiece (docs/benchmarks.md, start-up).
  """
  already = jax.config.jax_compilation_cache_dir
  if already:
    return already
  setting = os.environ.get(ENV_VAR, "")
  if setting.lower() in OFF:
    return None
  path = os.path.abspath(setting or os.path.join(cache_root(), "jax_compilation"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
  return path
