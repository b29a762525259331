"""One live launch per workdir, with real processes: a held folder refuses a second
holder at once and names the first, a killed holder's lock is gone, a waiter gets the
folder when the holder ends, and a sweep skips the run folders another launch holds."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from untapped_jax import workdir_lock

from real_mnist import DATA_DIR

HOLDER = """
import sys, time
from untapped_jax import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(float(sys.argv[2]))
"""


def start_holder(folder, seconds=600.0):
  """A separate process that holds `folder` for `seconds`; returns once it does."""
  process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == "held"
  return process


def test_a_held_folder_refuses_a_second_holder_and_names_the_first(tmp_path):
  holder = start_holder(tmp_path / "run")
  try:
    with pytest.raises(workdir_lock.FolderInUse) as raised:
      with workdir_lock.hold(str(tmp_path / "run")):
        pytest.fail("entered a folder another live process holds")
    message = str(raised.value)
    assert f"pid {holder.pid} on " in message and "since 20" in message
    assert "\n" not in message and str(tmp_path / "run") in message
  finally:
    holder.kill()
    holder.wait()
  # The kernel released the killed holder's lock: nothing stale to clean up.
  with workdir_lock.hold(str(tmp_path / "run")):
    held_by = json.loads((tmp_path / "run" / workdir_lock.LOCK_FILE).read_text())
  assert held_by["pid"] == os.getpid()


def test_a_waiter_gets_the_folder_when_the_holder_ends(tmp_path):
  holder = start_holder(tmp_path / "cache", seconds=1.0)
  start = time.monotonic()
  with workdir_lock.hold(str(tmp_path / "cache"), wait=True):
    waited = time.monotonic() - start
  holder.wait()
  assert waited > 0.5  # blocked until the holder's 1 s with-block ended, not refused


def test_hold_available_skips_held_folders(tmp_path):
  folders = [str(tmp_path / f"seed_{s}") for s in range(3)]
  holder = start_holder(folders[1])
  try:
    with workdir_lock.hold_available(folders) as held:
      assert held == [folders[0], folders[2]]
      with pytest.raises(workdir_lock.FolderInUse):  # held by this launch now
        with workdir_lock.hold(folders[0]):
          pass
    with workdir_lock.hold(folders[0]):  # released at the end of the with
      pass
  finally:
    holder.kill()
    holder.wait()


# ----------------------------------------------------------------------------- launches


TINY = {"data.source": "folder", "data.max_unlabeled": 500, "data.num_validation": 500,
        "model.hidden": (32,), "model.latent_dim": 4, "train.log_every": 3,
        "train.eval_every": 6, "train.checkpoint_every": 0, "train.progress_bar": False,
        "train.tensorboard": False, "eval.semantic": False}


def train_command(workdir, **flags):
  flags = {**TINY, "train.num_steps": 6, **flags}
  return ([sys.executable, "-m", "untapped_jax.main", f"--workdir={workdir}",
           f"--config.data.dir={DATA_DIR}"] + [f"--config.{k}={v}" for k, v in flags.items()])


@pytest.mark.slow
def test_a_second_launch_into_a_live_runs_workdir_stops_at_once_touching_nothing(tmp_path):
  workdir = tmp_path / "run"
  # The first launch: long enough to be alive when the second comes.
  long = {"train.num_steps": 2000, "train.log_every": 100, "train.eval_every": 1000}
  log = open(tmp_path / "first.log", "w")
  first = subprocess.Popen(train_command(workdir, **long), stdout=log,
                           stderr=log)
  try:
    deadline = time.time() + 300
    while not (workdir / "metrics.jsonl").exists():
      assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
      time.sleep(0.05)
    with pytest.raises(workdir_lock.FolderInUse, match=f"pid {first.pid} on "):
      with workdir_lock.hold(str(workdir)):
        pass
    before = sorted(p.name for p in workdir.iterdir())
    second = subprocess.run(train_command(workdir, **long),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"is in use by a live run (pid {first.pid} on " in lines[0]
    assert first.poll() is None  # the second launch left the first alone
    assert sorted(p.name for p in workdir.iterdir()) == before
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # That the killed run's lock then never blocks its rerun is kill_test.py's to show: it
  # reruns killed launches into their workdirs.


SWEEP_CONFIG = """
from untapped_jax import sweep
from untapped_jax.configs import default


def get_config(arg=None):
  del arg  # the seeds, for get_hyper
  c = default.get_config()
  c.data.dir = {data_dir!r}
  return sweep.apply_point(c, {{f"config.{{k}}": v for k, v in {flags!r}.items()}})


def get_hyper(hyper, arg="0+1+2"):
  return hyper.sweep("config.seed", [int(s) for s in arg.split("+")])
"""


def sweep_command(tmp_path, root, seeds):
  config = tmp_path / "lock_sweep.py"
  config.write_text(SWEEP_CONFIG.format(data_dir=DATA_DIR, flags={**TINY, "train.num_steps": 60}))
  return [sys.executable, "-m", "untapped_jax.sweep", f"--config={config}:{seeds}",
          f"--workdir={root}", "--max_population=1", "--metrics=test_accuracy",
          "--reference=default"]


def trained_seeds(stderr):
  """The seeds this sweep process trained, from its 'population i/n: [...]' lines."""
  return sorted(int(line.rsplit("seed_", 1)[1].split("'")[0]) for line in stderr.splitlines()
                if "population " in line and ": ['" in line and "held by" not in line)


@pytest.mark.slow
def test_sweeps_skip_held_run_folders_and_never_train_a_point_twice(tmp_path):
  root = tmp_path / "sweep"
  holder = start_holder(root / "default" / "seed_1")
  try:
    alone = subprocess.run(sweep_command(tmp_path, root, "0+1"), capture_output=True,
                           text=True, timeout=600)
  finally:
    holder.kill()
    holder.wait()
  assert alone.returncode == 0, alone.stderr[-3000:]
  assert "held by another live launch; skipped here" in alone.stderr
  assert trained_seeds(alone.stderr) == [0]
  assert not (root / "default" / "seed_1" / "results.json").exists()
  # Two sweeps at once over overlapping points (1 left over, 2 and 3 shared, 4 not):
  # every point is trained by exactly one of them.
  launches = [subprocess.Popen(sweep_command(tmp_path, root, seeds), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
              for seeds in ("0+1+2+3", "1+2+3+4")]
  outputs = [p.communicate(timeout=600) for p in launches]
  assert [p.returncode for p in launches] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  trained = [trained_seeds(err) for _, err in outputs]
  assert sorted(trained[0] + trained[1]) == [1, 2, 3, 4], trained
  for s in range(5):
    assert (root / "default" / f"seed_{s}" / "results.json").exists()
  report = subprocess.run(sweep_command(tmp_path, root, "0+1+2+3+4") + ["--report_only"],
                          capture_output=True, text=True, timeout=300)
  assert report.returncode == 0, report.stderr[-3000:]
  assert "| default | 5 |" in report.stdout
