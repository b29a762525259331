"""host_memory.keep_freed_memory: the M2 train step's temporary buffer is reused from one
step to the next instead of being mapped and zero-filled again, as the kernel counts
page faults, in the processes of benchmarks/page_faults.py (one kept, one with
UNTAPPED_KEEP_HOST_MEMORY=off)."""

import json
import pathlib
import platform
import subprocess
import sys

import pytest

from untapped_jax import host_memory

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGE = 4096


def _huge_pages_always() -> bool:
  try:
    return "[always]" in pathlib.Path(
        "/sys/kernel/mm/transparent_hugepage/enabled").read_text()
  except OSError:
    return False


@pytest.mark.slow
@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc only")
def test_kept_memory_spares_each_step_its_page_faults():
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "page_faults.py"),
                         "--pairs=1", "--warmup=20", "--steps=15", "--json"],
                        capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  kept, defaults = figures["runs"]["kept"][0], figures["runs"]["defaults"][0]
  assert kept["kept"] is True and defaults["kept"] is False
  # The default batches' step needs a temporary buffer past glibc's 32 MB mmap ceiling.
  pages = figures["temp_mb"] * 2**20 / PAGE
  assert figures["temp_mb"] > 32
  # Kept: the step reuses last step's pages. What still faults is the heap growing by a
  # buffer's worth now and then (once or twice in 15 steps after the warm-up, at most).
  assert kept["minor_faults"] < 0.25 * pages
  if not _huge_pages_always():  # 2 MB pages would fault 512 times less either way
    # glibc's defaults: the buffer is mapped anew each step, most of its pages fault.
    assert defaults["minor_faults"] > 0.5 * pages
    assert kept["minor_faults"] < defaults["minor_faults"] / 4
  assert "| kept |" in proc.stdout and "| defaults |" in proc.stdout


def test_page_faults_refuses_bad_counts():
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "page_faults.py"),
                         "--pairs=0"], capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode == 2 and "| kept |" not in proc.stdout
  assert "--pairs=0" in proc.stderr.strip().splitlines()[-1]


def test_the_variable_turns_it_off_or_names_a_bad_value(monkeypatch):
  # Neither call reaches mallopt: off returns first, a bad value raises first.
  monkeypatch.setenv(host_memory.ENV_VAR, "OFF")
  assert host_memory.keep_freed_memory() is False
  monkeypatch.setenv(host_memory.ENV_VAR, "sometimes")
  with pytest.raises(ValueError, match=r"UNTAPPED_KEEP_HOST_MEMORY='sometimes'; expected "
                     r"'on' \(the default\) or 'off'"):
    host_memory.keep_freed_memory()
