"""benchmarks/throughput.py runs end to end in its tiny mode (figures, never timings)."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_throughput_tiny_prints_the_table_and_every_json_key():
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--tiny", "--json",
       "--steps=2", "--populations=1,2", "--notorch"],
      capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  figures = json.loads(lines[-1])
  for key in ("jax_examples_per_s", "jax_untapped_examples_per_s", "matmul_gflops",
              "useful_gflops", "vmap2_per_seed_cost_ratio"):
    assert figures[key] > 0, key
  assert figures["vmap1_per_seed_cost_ratio"] == 1.0
  # Without the PyTorch peer its figures are null, not made up.
  assert figures["torch_eager_examples_per_s"] is None
  table = "\n".join(lines[:-1])
  assert "| jax_m2_s2 |" in table and "| matmul 1024² f32 |" in table
