"""experiments/slurm/*.sh: the commands a SLURM task runs, with the launchers replaced by
stubs on PATH that print their arguments (no SLURM on the test machine)."""

import os
import pathlib
import subprocess

import pytest

SLURM = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "slurm"


@pytest.fixture
def stub_path(tmp_path):
  for name in ("untapped-sweep", "untapped-train", "srun"):
    stub = tmp_path / name
    stub.write_text('#!/usr/bin/env bash\necho "$(basename "$0")" "$@"\n')
    stub.chmod(0o755)
  return f"{tmp_path}:{os.environ['PATH']}"


def run(script, args, env):
  return subprocess.run(["bash", str(SLURM / script), *args], env=env, capture_output=True,
                        text=True, timeout=60)


@pytest.mark.parametrize("first,task,count,shard", [(0, 0, 4, 0), (0, 3, 4, 3), (5, 7, 3, 2)])
def test_array_task_runs_its_shard_of_the_sweep(stub_path, first, task, count, shard):
  env = dict(os.environ, PATH=stub_path, SLURM_ARRAY_TASK_ID=str(task),
             SLURM_ARRAY_TASK_MIN=str(first), SLURM_ARRAY_TASK_COUNT=str(count))
  out = run("sweep_array.sh", ["cfg.py:sweep=claim,seeds=10", "runs/x", "--max_population",
                               "2"], env)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["untapped-sweep", "--config", "cfg.py:sweep=claim,seeds=10",
                                "--workdir", "runs/x", "--shard", str(shard), "--num_shards",
                                str(count), "--max_population", "2"]


def test_array_script_outside_an_array_is_one_usage_line(stub_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  out = run("sweep_array.sh", ["cfg.py", "runs/x"], dict(env, PATH=stub_path))
  assert out.returncode == 2 and out.stdout == ""
  assert len(out.stderr.splitlines()) == 1 and "--array" in out.stderr


def test_multihost_script_starts_every_task_under_srun(stub_path):
  out = run("train_multihost.sh", ["cfg.py:model=untapped", "runs/y", "--config.seed=3"],
            dict(os.environ, PATH=stub_path))
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["srun", "untapped-train", "--config", "cfg.py:model=untapped",
                                "--workdir", "runs/y", "--config.seed=3"]
