"""glibc's malloc told to keep freed memory, so that XLA:CPU reuses its buffers.

XLA:CPU takes each execution's temporary buffer from malloc and frees it when the
execution ends: 49 MB for an M2 train step at 100 labeled + 200 unlabeled images, 110 MB
at jonemeth's 1 + 499 (124 MB for two replicas). glibc serves a block that large with a fresh mmap (above its mmap
threshold, or above the 64 MB heap of the worker thread's own arena) and unmaps it on
free, so every step the kernel maps the buffer again and zero-fills every page the step
touches: 12,500 page faults and 25-35 ms of system time per M2 step at the first batch,
29,000 and 77 ms at the second, on the 2-core Xeon (docs/benchmarks.md). One arena for
all threads and mmap and trim thresholds at their largest keep the memory in malloc's
heap for the next step. The cost: the process keeps its peak heap rather than returning
freed memory to the system, which suits a training process.

The command-line entry points and the benchmarks call keep_freed_memory() first, before
JAX starts its threads (a thread that has allocated keeps its arena);
UNTAPPED_KEEP_HOST_MEMORY=off leaves glibc's defaults. Other C libraries (musl, macOS's)
are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import sys

ENV_VAR = "UNTAPPED_KEEP_HOST_MEMORY"
ON = ("", "on", "1", "true")
OFF = ("off", "0", "false", "none")

# mallopt's parameters (glibc's malloc.h) and their values here: one arena, and no block
# mapped on its own or trimmed below 2 GiB (mallopt takes a C int).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, 2**31 - 1), (_M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory() -> bool:
  """Sets glibc's malloc as the module doc says; True where it took every setting, False
  where it is off (UNTAPPED_KEEP_HOST_MEMORY) or the C library is not glibc. Any other
  value of the variable is a ValueError naming it, raised before anything is set."""
  setting = os.environ.get(ENV_VAR, "")
  if setting.lower() in OFF:
    return False
  if setting.lower() not in ON:
    raise ValueError(f"{ENV_VAR}={setting!r}; expected 'on' (the default) or 'off'.")
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  libc = ctypes.CDLL(None)  # the symbols of the running process, glibc's among them
  return all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS)


def peak_resident_mb() -> float:
  """This process's peak resident memory so far, in MiB. With freed memory kept it is the
  heap's high-water mark, about 1 GB more than glibc's defaults give in a two-replica run
  at jonemeth's batch (docs/benchmarks.md), so each run's timing.json records it."""
  return rusage_peak_mb(resource.getrusage(resource.RUSAGE_SELF))


def rusage_peak_mb(usage: resource.struct_rusage) -> float:
  """A getrusage / os.wait4 result's peak resident memory in MiB (ru_maxrss is KiB on
  Linux, bytes on macOS)."""
  return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
