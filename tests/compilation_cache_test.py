"""compilation_cache.enable: on by default under $UNTAPPED_CACHE_DIR, a second process
loads what the first compiled, UNTAPPED_COMPILATION_CACHE moves it or turns it off."""

import os
import subprocess
import sys

import pytest

PROGRAM = """
import time, jax, jax.numpy as jnp
from untapped_jax import compilation_cache
print(compilation_cache.enable(min_compile_time_s=0.0))
@jax.jit
def f(x):
  for i in range(20):
    x = jnp.tanh(x @ x.T) + i
  return x
f(jnp.ones((32, 32))).block_until_ready()
"""


def _run(env):
  clean = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  proc = subprocess.run([sys.executable, "-c", PROGRAM], env={**clean, **env},
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout.strip().splitlines()[-1]


def _entries(folder):
  return sorted(f for f in os.listdir(folder) if f.startswith("jit_f-"))


@pytest.mark.slow
def test_default_folder_is_filled_once_and_reused(tmp_path):
  env = {"UNTAPPED_CACHE_DIR": str(tmp_path)}
  folder = tmp_path / "jax_compilation"
  assert _run(env) == str(folder)
  first = _entries(folder)
  assert len(first) == 1
  mtime = os.path.getmtime(folder / first[0])
  _run(env)  # loads the entry: nothing new written, the entry untouched
  assert _entries(folder) == first
  assert os.path.getmtime(folder / first[0]) == mtime


@pytest.mark.slow
def test_environment_moves_it_or_turns_it_off(tmp_path):
  elsewhere = tmp_path / "elsewhere"
  env = {"UNTAPPED_CACHE_DIR": str(tmp_path / "root"),
         "UNTAPPED_COMPILATION_CACHE": str(elsewhere)}
  assert _run(env) == str(elsewhere)
  assert len(_entries(elsewhere)) == 1
  off = {"UNTAPPED_CACHE_DIR": str(tmp_path / "off"), "UNTAPPED_COMPILATION_CACHE": "off"}
  assert _run(off) == "None"
  assert not (tmp_path / "off").exists()
  # A folder set through JAX itself wins.
  jax_env = {"UNTAPPED_CACHE_DIR": str(tmp_path / "root2"),
             "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_own")}
  assert _run(jax_env) == str(tmp_path / "jax_own")
