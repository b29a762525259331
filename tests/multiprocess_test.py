"""jax.distributed for real: two processes on this machine (coordinator on 127.0.0.1, one
CPU device each) train a run and a population to the same files as one process with two
devices (XLA_FLAGS=--xla_force_host_platform_device_count=2), byte for byte here."""

import json
import os
import socket
import subprocess
import sys

import pytest

from real_mnist import DATA_DIR

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "m2_benchmark.py") + ":labels=100,runlocal"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def command(workdir, num_seeds):
  return [sys.executable, "-m", "untapped_jax.main", f"--config={CONFIG}",
          f"--workdir={workdir}", f"--config.data.dir={DATA_DIR}",
          f"--config.num_seeds={num_seeds}"]


def run_files(workdir, num_seeds):
  folders = [""] if num_seeds == 1 else [f"seed_{s}" for s in range(num_seeds)]
  return {os.path.join(f, n): (workdir / f / n).read_bytes() for f in folders
          for n in ("results.json", "metrics.jsonl", "config.json")}


# num_seeds=2: the population split by replica (seed s on process s); 1: one run, data
# parallel (parameters on both processes, each batch split between them).
@pytest.mark.parametrize("num_seeds", [2, 1])
def test_two_processes_write_what_one_process_with_two_devices_writes(tmp_path, num_seeds):
  base = dict(os.environ, JAX_PLATFORMS="cpu")
  port = free_port()
  logs = [open(tmp_path / f"process_{i}.log", "w") for i in range(2)]
  processes = [subprocess.Popen(command(tmp_path / "two_processes", num_seeds), stdout=log,
                                stderr=log, env=dict(base, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                     JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
               for i, log in enumerate(logs)]
  one = subprocess.run(command(tmp_path / "one_process", num_seeds), capture_output=True,
                       text=True, timeout=600,
                       env=dict(base, XLA_FLAGS=f"{base.get('XLA_FLAGS', '')} "
                                              "--xla_force_host_platform_device_count=2"))
  for p in processes:
    p.wait(timeout=600)
  for i, p in enumerate(processes):
    assert p.returncode == 0, (tmp_path / f"process_{i}.log").read_text()[-3000:]
  assert one.returncode == 0, one.stderr[-3000:]
  log = (tmp_path / "process_0.log").read_text()
  assert "jax.distributed.initialize({'coordinator_address'" in log
  ours = run_files(tmp_path / "two_processes", num_seeds)
  reference = run_files(tmp_path / "one_process", num_seeds)
  assert ours.keys() == reference.keys()
  for name in ours:  # the runs' files hold no clock times: equal bytes, or a difference
    assert ours[name] == reference[name], name
  results = json.loads(ours[next(iter(ours))])
  assert results["population_size"] == num_seeds
