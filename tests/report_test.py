"""untapped-report: run folders found, grouped by variant, tabulated and plotted."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from untapped_jax import report
from untapped_jax import stats


def write_run(folder, *, seed, accuracy, steps=(10, 20)):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "results.json"), "w") as f:
    json.dump({"seed": seed, "num_steps": steps[-1], "test_accuracy": accuracy,
               "test_unlabeled_bound": -100.0 - seed}, f)
  with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
    for s in steps:
      f.write(json.dumps({"step": s, "train/unlabeled_bound": -200.0 + s,
                          "validation/accuracy": accuracy * s / steps[-1]}) + "\n")


@pytest.fixture
def sweep_root(tmp_path):
  root = tmp_path / "sweep"
  for seed, (a, b) in enumerate([(0.80, 0.85), (0.70, 0.78), (0.75, 0.79)]):
    write_run(root / "model_name=m2" / f"seed_{seed}", seed=seed, accuracy=a)
    write_run(root / "model_name=untapped" / f"seed_{seed}", seed=seed, accuracy=b)
  os.makedirs(root / "populations" / "abc" / "checkpoints")
  return root


def test_sweep_folder_reports_one_row_per_variant_with_paired_differences(sweep_root, tmp_path):
  md = report.write_report([str(sweep_root)], str(tmp_path / "out"),
                           metrics=["test_accuracy"], reference="model_name=m2")
  mean, half = stats.mean_and_interval([0.85, 0.78, 0.79])
  assert f"| model_name=untapped | 3 | {mean:.3f} ± {half:.3f} |" in md
  diff_mean, diff_half = stats.mean_and_interval([0.05, 0.08, 0.04])
  assert f"| model_name=untapped | 3 | {diff_mean:.3f} ± {diff_half:.3f} |" in md
  assert "| model_name=m2 | 1 | 20 | 0.700 |" in md  # the per-seed row of seed 1
  out = tmp_path / "out"
  assert (out / "report.md").read_text() == md
  assert (out / "curves_0.png").stat().st_size > 1000 and (out / "curves_1.png").exists()
  assert len((out / "report.csv").read_text().splitlines()) == 1 + 6


def test_num_seeds_folder_and_single_runs_name_their_variants(tmp_path):
  for seed in (4, 5):
    write_run(tmp_path / "m2x2" / f"seed_{seed}", seed=seed, accuracy=0.5 + seed / 100)
  write_run(tmp_path / "single", seed=0, accuracy=0.9)
  runs = report.find_runs([str(tmp_path / "m2x2"), str(tmp_path / "single")])
  assert runs == {"m2x2": {4: str(tmp_path / "m2x2" / "seed_4"),
                           5: str(tmp_path / "m2x2" / "seed_5")},
                  "single": {0: str(tmp_path / "single")}}
  md = report.write_report([str(tmp_path / "m2x2")], str(tmp_path / "r"),
                           metrics=["test_accuracy"])
  assert f"| m2x2 | 2 | {np.mean([0.54, 0.55]):.3f} ±" in md


def test_folders_without_runs_are_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a folder"):
    report.find_runs([str(tmp_path / "missing")])
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="no results.json"):
    report.find_runs([str(tmp_path / "empty")])


def test_the_command_names_a_folder_without_runs_in_one_line(tmp_path):
  os.makedirs(tmp_path / "empty")
  proc = subprocess.run([sys.executable, "-m", "untapped_jax.report", str(tmp_path / "empty"),
                         f"--out={tmp_path / 'out'}"], capture_output=True, text=True)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "no results.json" in lines[0] and "empty" in lines[0], lines
  assert not (tmp_path / "out").exists()


def test_a_metric_no_run_has_is_an_error_naming_it(tmp_path):
  write_run(tmp_path / "run", seed=0, accuracy=0.5)
  with pytest.raises(ValueError, match="test_acuracy") as e:
    report.write_report([str(tmp_path / "run")], str(tmp_path / "out"),
                        metrics=["test_accuracy", "test_acuracy"])
  assert "test_accuracy" in str(e.value).split("have", 1)[1]
  assert not (tmp_path / "out").exists()
