"""Faults: a newest checkpoint that cannot be read costs one checkpoint interval (the rerun
says so, resumes from the one before, and ends in the bytes of a run never damaged); when
none can be read, the launch says so in one line. A disk that stops taking writes while a
run trains stops it with one clear error, the last checkpoint intact, and the rerun ends in
the bytes of a run never stopped."""

import errno
import os
import pathlib
import subprocess
import sys

import pytest

from untapped_jax import launch
from untapped_jax import metric_writer
from untapped_jax import run_dir
from untapped_jax import saved_state
from untapped_jax import train

from real_mnist import DATA_DIR

import population_test

pytestmark = pytest.mark.slow

OVERRIDES = {"train.checkpoint_every": 10, "model_name": "untapped"}  # checkpoints at 10 and 20
RUN_FILES = ("results.json", "metrics.jsonl", "config.json")


def damage(step_folder: pathlib.Path) -> None:
  """Every file of the checkpoint cut to nothing, as a full disk or a bad copy leaves it."""
  for path in step_folder.rglob("*"):
    if path.is_file():
      path.write_bytes(b"")


def unfinish(workdir: pathlib.Path) -> None:
  """The state of a run killed in its final evaluation: checkpoints, no results."""
  for name in ("results.json", "timing.json"):
    (workdir / name).unlink()


def test_an_unreadable_newest_checkpoint_resumes_from_the_one_before(tmp_path, caplog):
  config = population_test.tiny_config(**OVERRIDES)
  reference, damaged = tmp_path / "reference", tmp_path / "damaged"
  train.train_and_evaluate(config, str(reference))
  train.train_and_evaluate(config, str(damaged))
  assert sorted(os.listdir(damaged / "checkpoints")) == ["10", "20"]
  unfinish(damaged)
  damage(damaged / "checkpoints" / "20")
  with caplog.at_level("INFO"):
    train.train_and_evaluate(config, str(damaged))
  assert "checkpoint at step 20 cannot be restored" in caplog.text
  assert "resumed from step 10" in caplog.text
  for name in RUN_FILES:
    assert (damaged / name).read_bytes() == (reference / name).read_bytes(), name
  # The damaged one is kept aside for a post-mortem; orbax sees the new 10 and 20 only.
  assert sorted(os.listdir(damaged / "checkpoints")) == ["10", "20", "20.unreadable"]


def test_no_readable_checkpoint_is_one_line_naming_the_folder(tmp_path):
  config = population_test.tiny_config(**OVERRIDES)
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  unfinish(workdir)
  for step in ("10", "20"):
    damage(workdir / "checkpoints" / step)
  with pytest.raises(saved_state.NoGoodCheckpoint, match="none restores"):
    train.train_and_evaluate(config, str(workdir))
  # The command line: the same as one line on stderr, exit status 2.
  flags = [f"--config.{k}={v}" for k, v in {
      "data.dir": DATA_DIR, "data.source": "folder", "data.num_validation": 1000,
      "data.max_unlabeled": 2000, "data.max_label_only": 2000, "data.labeled_batch_size": 20,
      "data.unlabeled_batch_size": 20, "data.label_only_batch_size": 20,
      "model.hidden": (64,), "model.latent_dim": 8, "train.num_steps": 20,
      "train.log_every": 10, "train.eval_every": 20, "train.progress_bar": False,
      "train.eval_batch_size": 2000, **OVERRIDES}.items()]
  out = subprocess.run([sys.executable, "-m", "untapped_jax.main", f"--workdir={workdir}",
                        *flags], capture_output=True, text=True, timeout=600)
  assert out.returncode == 2, out.stderr[-3000:]
  # (Above it, orbax's and our own log lines of each failed attempt.)
  errors = [l for l in out.stderr.splitlines() if l.startswith("main.py: error:")]
  assert len(errors) == 1 and "none restores" in errors[0] and str(workdir) in errors[0]
  assert out.stderr.strip().splitlines()[-1] == errors[0]


def test_a_disk_that_fills_mid_run_stops_it_cleanly_and_the_rerun_resumes(tmp_path,
                                                                          monkeypatch):
  config = population_test.tiny_config(**{**OVERRIDES, "train.num_steps": 30})
  reference, stopped = tmp_path / "reference", tmp_path / "stopped"
  train.train_and_evaluate(config, str(reference))
  append = metric_writer._append_line  # pylint: disable=protected-access

  def full_disk_from_step_20(path, record):
    if record["step"] >= 20:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    append(path, record)

  monkeypatch.setattr(metric_writer, "_append_line", full_disk_from_step_20)
  with pytest.raises(run_dir.RunFolderUnwritable,
                     match=r"No space left on device.*last checkpoint \(step 10\) is intact"):
    train.train_and_evaluate(config, str(stopped))
  assert issubclass(run_dir.RunFolderUnwritable, launch.STARTUP_ERRORS)  # one line, exit 2
  assert sorted(os.listdir(stopped / "checkpoints")) == ["10"]
  assert not (stopped / "results.json").exists()
  monkeypatch.setattr(metric_writer, "_append_line", append)  # space again
  train.train_and_evaluate(config, str(stopped))
  for name in RUN_FILES:
    assert (stopped / name).read_bytes() == (reference / name).read_bytes(), name
