"""SIGKILL at any moment, then the same command again: the same bytes as a run that never
stopped (real MNIST, real subprocesses, real kills). The reference is another process,
so this is also the test that one config and seed give the same bytes on CPU."""

import os
import signal
import subprocess
import sys
import time

import pytest

DATA_DIR = os.environ.get("UNTAPPED_DATA_DIR", "")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA_DIR, reason="set UNTAPPED_DATA_DIR to real MNIST")]

NUM_STEPS = 400
# Long enough (a few seconds of training on two cores) that the kills land inside
# training, while a checkpoint is written, and inside the final evaluation.
FLAGS = {
    "data.source": "folder", "data.num_validation": 2000, "data.max_unlabeled": 5000,
    "data.max_label_only": 5000, "model_name": "untapped", "model.hidden": "(256,)",
    "train.num_steps": NUM_STEPS, "train.log_every": 20, "train.eval_every": 100,
    "train.checkpoint_every": 40, "train.progress_bar": False, "train.tensorboard": False,
}
PER_RUN = ("metrics.jsonl", "results.json", "config.json")


def command(workdir, num_seeds):
  return ([sys.executable, "-m", "untapped_jax.main", f"--workdir={workdir}",
           f"--config.data.dir={DATA_DIR}", f"--config.num_seeds={num_seeds}"]
          + [f"--config.{k}={v}" for k, v in FLAGS.items()])


def compared(num_seeds):
  """The files that must match byte for byte: each seed's, and a population's summary."""
  if num_seeds == 1:
    return list(PER_RUN)
  return ([os.path.join(f"seed_{s}", n) for s in range(num_seeds) for n in PER_RUN]
          + ["summary.json", "summary.md"])


def environment(tmp_path):
  env = dict(os.environ)
  # One compilation cache for every attempt, so a restart costs seconds, not a compile.
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
  return env


def committed_steps(workdir):
  folder = workdir / "checkpoints"
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if folder.exists() else []


def checkpoint_in_flight(workdir):
  folder = workdir / "checkpoints"
  return folder.exists() and any("tmp" in n for n in os.listdir(folder))


def run_dir(workdir):
  """The folder of seed 0's files: the workdir itself, or seed_0/ in a population."""
  return workdir / "seed_0" if (workdir / "seed_0").exists() else workdir


def metric_lines(workdir):
  path = run_dir(workdir) / "metrics.jsonl"
  return len(path.read_text().splitlines()) if path.exists() else 0


def run_and_kill(workdir, num_seeds, env, until, timeout=300):
  """Starts the run, SIGKILLs it as soon as `until(workdir)` holds; returns True if the
  process was killed (False if it ended first)."""
  log = open(f"{workdir}.{until.__name__}.log", "w")  # a file: a full pipe would block it
  process = subprocess.Popen(command(workdir, num_seeds), env=env, stdout=log, stderr=log)
  deadline = time.time() + timeout
  while process.poll() is None and time.time() < deadline:
    if until(workdir):
      process.send_signal(signal.SIGKILL)
      process.wait()
      return True
    time.sleep(0.001)
  if process.poll() is None:
    process.kill()
    pytest.fail(f"{until.__name__} never held within {timeout} s")
  assert process.returncode == 0, open(log.name).read()[-3000:]
  return False


def run_to_end(workdir, num_seeds, env):
  result = subprocess.run(command(workdir, num_seeds), env=env, capture_output=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  return result.stderr.decode()


@pytest.mark.parametrize("num_seeds", [1, 2])  # a run, and a population of two seeds
def test_killed_runs_resume_to_the_same_bytes(tmp_path, num_seeds):
  env = environment(tmp_path)
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  run_to_end(reference, num_seeds, env)

  def mid_training(w):  # the first log line, before any checkpoint beyond step 40
    return metric_lines(w) >= 1

  def mid_checkpoint(w):  # orbax's temporary folder of a checkpoint past the first kill's
    return checkpoint_in_flight(w) and metric_lines(w) >= 6

  def mid_validation(w):  # just after step 200 is logged, i.e. after its validation
    return metric_lines(w) >= 10 and not checkpoint_in_flight(w)

  def mid_final_evaluation(w):  # training ended (timing.json), results.json not yet
    return (run_dir(w) / "timing.json").exists() and not (run_dir(w) / "results.json").exists()

  kills = [mid_training, mid_checkpoint, mid_validation, mid_final_evaluation]
  killed_at = [until.__name__ for until in kills
               if run_and_kill(killed, num_seeds, env, until)]
  assert len(killed_at) >= 3, killed_at  # the run was really killed, several times
  assert not (run_dir(killed) / "results.json").exists()
  log = run_to_end(killed, num_seeds, env)
  assert "resumed from step" in log
  names = compared(num_seeds)
  for name in names:
    assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
  assert committed_steps(killed)[-1] == NUM_STEPS
  # A rerun of the finished run trains nothing and changes no byte.
  before = {n: (killed / n).read_bytes() for n in names}
  log = run_to_end(killed, num_seeds, env)
  assert "resumed from step" not in log
  assert {n: (killed / n).read_bytes() for n in names} == before
  leftovers = ([n for n in os.listdir(run_dir(killed)) if ".tmp" in n]
               + [n for n in os.listdir(killed / "checkpoints") if "tmp" in n])
  assert not leftovers, leftovers
