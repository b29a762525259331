"""How a command starts: one line for a start-up error, and jax.distributed under a
multi-host launcher (SLURM, Open MPI, TPU VMs, or by hand with JAX_* variables)."""

from __future__ import annotations

import logging as std_logging
import os
import sys
from typing import Any, Callable

from absl import flags
from absl import logging
import jax

from untapped_jax import run_dir
from untapped_jax import workdir_lock

_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of a start-up error.")

# What a bad config, data folder or workdir raises: each names the key or path, the value
# and what is accepted. Anything else is a bug and keeps its traceback.
# (saved_state.NoGoodCheckpoint is a ValueError.) A disk that takes no more writes while
# a run trains is one line too (run_dir.RunFolderUnwritable).
STARTUP_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
                  workdir_lock.FolderInUse, run_dir.RunFolderUnwritable)


def one_line_errors(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """`main` for absl's app.run, printing a start-up error as one line on stderr (the
  command's name, then the message) and exiting 2; --debug re-raises it instead."""
  def wrapped(argv):
    # JAX reports at INFO, on every machine without a TPU, that it found no TPU: noise
    # that would stand before a start-up error's one line.
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
    try:
      return main(argv)
    except STARTUP_ERRORS as e:
      if _DEBUG.value:
        raise
      message = " ".join(str(e).split()) or type(e).__name__
      print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
      sys.exit(2)
  return wrapped


def multi_host_launch(env=os.environ) -> bool:
  """True under a multi-host launcher: JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES
  and JAX_PROCESS_ID), SLURM with more than one task, a TPU pod slice of several
  workers, or Open MPI with more than one process."""
  count = lambda name: int(env.get(name, "1") or 1)
  return bool(env.get("JAX_COORDINATOR_ADDRESS") or count("SLURM_NTASKS") > 1
              or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
              or count("OMPI_COMM_WORLD_SIZE") > 1)


def distributed_arguments(env=os.environ) -> dict[str, Any]:
  """jax.distributed.initialize's arguments for a launch by hand.

  JAX finds the coordinator and the process ids itself under SLURM, Open MPI and on
  TPU VMs, but reads only JAX_COORDINATOR_ADDRESS from the environment: with it, the
  process count and id must come from JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  address = env.get("JAX_COORDINATOR_ADDRESS")
  if not address:
    return {}
  out = {"coordinator_address": address}
  for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
    value = env.get(name, "")
    if not value.isdigit():
      raise ValueError(f"{name}={value!r}; with JAX_COORDINATOR_ADDRESS set, expected a "
                       "non-negative integer (JAX_NUM_PROCESSES >= 1, 0 <= JAX_PROCESS_ID < it).")
    out[key] = int(value)
  if not 0 <= out["process_id"] < out["num_processes"]:
    raise ValueError(f"JAX_PROCESS_ID={out['process_id']}, JAX_NUM_PROCESSES="
                     f"{out['num_processes']}; expected 0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES.")
  return out


def initialize_distributed() -> None:
  """jax.distributed.initialize() under a multi-host launcher (distributed_arguments)."""
  if multi_host_launch():
    arguments = distributed_arguments()
    logging.info("multi-host launch: jax.distributed.initialize(%s)", arguments)
    jax.distributed.initialize(**arguments)
