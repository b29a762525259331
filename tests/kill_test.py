"""SIGKILL at any moment, then the same command again: the same bytes as a run that never
stopped (real MNIST, real subprocesses, real kills), for a run and for a sweep whose two
seeds train as one population. The reference is another process, so this is also the
test that one config and seed give the same bytes on CPU."""

import dataclasses
import glob
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from real_mnist import DATA_DIR

pytestmark = pytest.mark.slow

NUM_STEPS = 200
# Long enough (a few seconds of training on two cores) that the kills land inside
# training, while a checkpoint is written, and inside the final evaluation.
FLAGS = {
    "data.source": "folder", "data.num_validation": 2000, "data.max_unlabeled": 5000,
    "data.max_label_only": 5000, "data.labeled_batch_size": 50,
    "data.unlabeled_batch_size": 50, "data.label_only_batch_size": 50,
    "model_name": "untapped", "model.hidden": (128,),
    "train.num_steps": NUM_STEPS, "train.log_every": 10, "train.eval_every": 50,
    "train.checkpoint_every": 30, "train.progress_bar": False, "train.tensorboard": False,
}
PER_RUN = ("metrics.jsonl", "results.json", "config.json")
SWEEP_CONFIG = """
from untapped_jax import sweep
from untapped_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.dir = {data_dir!r}
  return sweep.apply_point(c, {{f"config.{{k}}": v for k, v in {flags!r}.items()}})


def get_hyper(hyper):
  return hyper.sweep("config.seed", [0, 1])
"""


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where one kind of launch puts its files; `first` is seed 0's run folder."""
  kind: str  # 'run' | 'sweep'

  def command(self, workdir: pathlib.Path) -> list[str]:
    if self.kind == "sweep":
      config = workdir.parent / f"kill_sweep_{workdir.name}.py"  # one per launch folder
      config.write_text(SWEEP_CONFIG.format(data_dir=DATA_DIR, flags=FLAGS))
      return [sys.executable, "-m", "untapped_jax.sweep", f"--config={config}",
              f"--workdir={workdir}"]
    return ([sys.executable, "-m", "untapped_jax.main", f"--workdir={workdir}",
             f"--config.data.dir={DATA_DIR}"] + [f"--config.{k}={v}" for k, v in FLAGS.items()])

  def first(self, workdir: pathlib.Path) -> pathlib.Path:
    return workdir / "default" / "seed_0" if self.kind == "sweep" else workdir

  def checkpoints(self, workdir: pathlib.Path) -> pathlib.Path | None:
    if self.kind != "sweep":
      return workdir / "checkpoints"
    found = glob.glob(str(workdir / "populations" / "*" / "checkpoints"))
    return pathlib.Path(found[0]) if found else None

  def compared(self) -> list[str]:
    """The files that must match byte for byte: each seed's run files."""
    if self.kind == "run":
      return list(PER_RUN)
    return [f"default/seed_{s}/{n}" for s in (0, 1) for n in PER_RUN]


def environment(tmp_path):
  # os.environ carries the session's compilation cache (conftest.py) into every attempt,
  # so a restart costs seconds, not a compile; both launch kinds share its programs.
  del tmp_path
  assert os.environ.get("JAX_COMPILATION_CACHE_DIR"), "conftest.py sets the session's cache"
  return dict(os.environ, JAX_PLATFORMS="cpu")


def listing(folder):
  return os.listdir(folder) if folder is not None and folder.exists() else []


def metric_lines(path):
  return len(path.read_text().splitlines()) if path.exists() else 0


def run_and_kill(layout, workdir, env, until, timeout=300):
  """Starts the launch, SIGKILLs it as soon as `until()` holds; returns True if the
  process was killed (False if it ended first)."""
  log = open(f"{workdir}.{until.__name__}.log", "w")  # a file: a full pipe would block it
  process = subprocess.Popen(layout.command(workdir), env=env, stdout=log, stderr=log)
  deadline = time.time() + timeout
  while process.poll() is None and time.time() < deadline:
    if until():
      process.send_signal(signal.SIGKILL)
      process.wait()
      return True
    time.sleep(0.001)
  if process.poll() is None:
    process.kill()
    pytest.fail(f"{until.__name__} never held within {timeout} s")
  assert process.returncode == 0, open(log.name).read()[-3000:]
  return False


def run_to_end(layout, workdir, env):
  result = subprocess.run(layout.command(workdir), env=env, capture_output=True, timeout=600)
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  return result.stderr.decode()


# (num_seeds populations are the sweep's code path: its two seeds train as one population.)
# The four moments of a kill are split between the two launch kinds, two each: every
# moment is killed once and both kinds resume from a kill, at two launches less apiece.
KILLS = {"run": ("mid_training", "mid_validation"),
         "sweep": ("mid_checkpoint", "mid_final_evaluation")}


@pytest.mark.parametrize("kind", ["run", "sweep"])
def test_killed_launches_resume_to_the_same_bytes(tmp_path, kind):
  layout, env = Layout(kind), environment(tmp_path)
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  # The uninterrupted reference trains beside the killed launches (its own folder; the
  # kill moments are read off the killed launch's files, not the clock), so the two
  # cores share its single-threaded start-up and evaluation with theirs.
  reference_log = open(f"{reference}.log", "w")
  reference_process = subprocess.Popen(layout.command(reference), env=env,
                                       stdout=reference_log, stderr=reference_log)
  first = layout.first(killed)
  in_flight = lambda: any("tmp" in n for n in listing(layout.checkpoints(killed)))

  def mid_training():  # the first log line, before any checkpoint beyond step 30
    return metric_lines(first / "metrics.jsonl") >= 1

  def mid_checkpoint():  # orbax's temporary folder of a checkpoint past the first kill's
    return in_flight() and metric_lines(first / "metrics.jsonl") >= 6

  def mid_validation():  # just after step 100 is logged, i.e. after its validation
    return metric_lines(first / "metrics.jsonl") >= 10 and not in_flight()

  def mid_final_evaluation():  # training ended (timing.json), results.json not yet
    return (first / "timing.json").exists() and not (first / "results.json").exists()

  kills = [k for k in (mid_training, mid_checkpoint, mid_validation, mid_final_evaluation)
           if k.__name__ in KILLS[kind]]
  killed_at = [until.__name__ for until in kills if run_and_kill(layout, killed, env, until)]
  assert killed_at == list(KILLS[kind]), killed_at  # really killed, at each moment
  assert not (first / "results.json").exists()
  log = run_to_end(layout, killed, env)
  assert "resumed from step" in log
  assert reference_process.wait(timeout=600) == 0, open(reference_log.name).read()[-3000:]
  names = layout.compared()
  for name in names:
    assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
  assert max(int(n) for n in listing(layout.checkpoints(killed)) if n.isdigit()) == NUM_STEPS
  # (A rerun of a finished launch trains nothing: population_test for a run, sweep_test's
  # command-line test for a sweep.)
  leftovers = ([n for n in listing(first) if ".tmp" in n]
               + [n for n in listing(layout.checkpoints(killed)) if "tmp" in n])
  assert not leftovers, leftovers
