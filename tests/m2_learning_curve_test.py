"""experiments/m2_learning_curve.py: a run's validation curve beside the published ones."""

import json
import subprocess
import sys

from repo_files import REPO
from repo_files import load_module

learning_curve = load_module(REPO / "experiments" / "m2_learning_curve.py")
SCRIPT = str(REPO / "experiments" / "m2_learning_curve.py")


def write_metrics(run_dir, records):
  run_dir.mkdir(parents=True, exist_ok=True)
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_keeps_only_the_evaluations(tmp_path):
  # As train.py writes them: a record every log_every steps, validation on some of them.
  write_metrics(tmp_path / "run", [
      {"step": 100, "unlabeled_epochs": 1.0, "train/loss": 3.0},
      {"step": 200, "unlabeled_epochs": 2.0, "validation/accuracy": 0.5,
       "validation/unlabeled_bound": -120.0, "train/loss": 2.0},
      {"step": 300, "unlabeled_epochs": 3.0, "train/loss": 1.5},
      {"step": 400, "unlabeled_epochs": 4.0, "validation/accuracy": 0.6},
  ])
  curve = learning_curve.read_curve(str(tmp_path / "run"))
  assert [(p["step"], p["unlabeled_epochs"], p["validation_accuracy"]) for p in curve] == [
      (200, 2.0, 0.5), (400, 4.0, 0.6)]
  assert "train_loss" not in curve[0]
  assert curve[0]["validation_unlabeled_bound"] == -120.0


def test_writes_the_figure_and_the_curves_with_the_published_points(tmp_path):
  write_metrics(tmp_path / "run", [
      {"step": 1000, "unlabeled_epochs": 10.0, "validation/accuracy": 0.4655},
      {"step": 2000, "unlabeled_epochs": 20.0, "validation/accuracy": 0.5118}])
  out_png, out_json = tmp_path / "curve.png", tmp_path / "curve.json"
  assert learning_curve.main(["--labels", "100", "--out_png", str(out_png), "--out_json",
                              str(out_json), f"seed 0={tmp_path / 'run'}"]) == 0
  assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  saved = json.loads(out_json.read_text())
  assert [p["validation_accuracy"] for p in saved["ours"]["seed 0"]] == [0.4655, 0.5118]
  # jonemeth's log: 93.19% validation and 92.85% test after 3000 epochs at 100 labels.
  assert saved["published"]["jonemeth validation"]["3000"] == 0.9319
  assert saved["published"]["jonemeth test"]["3000"] == 0.9285
  # Every 10th epoch to 200 (log.txt's "epoch: 0090/3000, val_accuracy:0.6317").
  assert saved["published"]["jonemeth validation"]["90"] == 0.6317


def test_the_table_has_the_published_epochs_each_run_reached_and_each_runs_last(tmp_path):
  write_metrics(tmp_path / "a", [
      {"step": s * 100, "unlabeled_epochs": float(s), "validation/accuracy": s / 100,
       "validation/unlabeled_bound": -100.0 - s / 10} for s in (5, 10, 20, 25)])
  write_metrics(tmp_path / "b", [
      {"step": 1000, "unlabeled_epochs": 10.0, "validation/accuracy": 0.12}])
  curves = {"a": learning_curve.read_curve(str(tmp_path / "a")),
            "b": learning_curve.read_curve(str(tmp_path / "b"))}
  rows = learning_curve.table(curves, 3000).splitlines()
  assert rows[0] == ("| epochs | a, validation | b, validation | mean ± 95% (n) "
                     "| mean − jonemeth | jonemeth's log, validation "
                     "| a, validation unlabeled bound |")
  # Epoch 5 is in no log; 10 and 20 are in jonemeth's (80.54%, 82.47% at 3000 labels);
  # 25 is run a's last evaluation, 10 run b's. At epoch 10 the two runs' mean is 11%,
  # their standard error 1 point and t(0.975, 1 dof) = 12.706: ± 12.7; 11 - 80.54 = -69.5.
  # Where one run reached the epoch there is no interval.
  assert rows[2:] == ["| 10 | 10.0% | 12.0% | 11.0% ± 12.7 (2) | -69.5 ± 12.7 | 80.5% | -101.0 |",
                      "| 20 | 20.0% |  |  |  | 82.5% | -102.0 |",
                      "| 25 | 25.0% |  |  |  |  | -102.5 |"]


def test_the_table_of_three_seeds_gives_their_mean_and_interval(tmp_path):
  for name, accuracy in (("s0", 0.80), ("s1", 0.82), ("s2", 0.84)):
    write_metrics(tmp_path / name, [
        {"step": 2000, "unlabeled_epochs": 10.0, "validation/accuracy": accuracy}])
  curves = {n: learning_curve.read_curve(str(tmp_path / n)) for n in ("s0", "s1", "s2")}
  # Mean 82%, sd 2 points, standard error 2 / sqrt(3) = 1.155, t(0.975, 2) = 4.303:
  # ± 4.97; 82 - 80.54 = +1.46.
  assert learning_curve.table(curves, 3000).splitlines()[2] == (
      "| 10 | 80.0% | 82.0% | 84.0% | 82.0% ± 5.0 (3) | +1.5 ± 5.0 | 80.5% |  |")
  # One run: the table keeps its single-run columns.
  single = learning_curve.table({"s0": curves["s0"]}, 3000).splitlines()
  assert single[2] == "| 10 | 80.0% | 80.5% |  |"


def test_a_folder_without_metrics_is_named_and_nothing_is_written(tmp_path):
  (tmp_path / "empty").mkdir()
  out = tmp_path / "curve.png"
  result = subprocess.run([sys.executable, SCRIPT, "--labels", "100", "--out_png", str(out),
                           f"x={tmp_path / 'empty'}"], capture_output=True, text=True)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "empty" in lines[0] and "metrics.jsonl" in lines[0]
  assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "empty"]


def test_a_run_without_validation_is_refused(tmp_path):
  write_metrics(tmp_path / "run", [{"step": 100, "unlabeled_epochs": 1.0, "train/loss": 3.0}])
  assert learning_curve.main(["--labels", "3000", "--out_png", str(tmp_path / "c.png"),
                              f"x={tmp_path / 'run'}"]) == 2
  assert not (tmp_path / "c.png").exists()


def test_the_training_table_sets_the_loss_beside_jonemeths_log(tmp_path):
  write_metrics(tmp_path / "run", [
      {"step": 2000, "unlabeled_epochs": 10.0, "train/loss": 120.0, "train/log_q_y": -1.5},
      {"step": 2100, "unlabeled_epochs": 10.5, "train/loss": 119.0, "train/log_q_y": -1.4},
      {"step": 2200, "unlabeled_epochs": 11.0, "train/loss": 118.0, "train/log_q_y": -1.3,
       "validation/accuracy": 0.8},
      {"step": 4000, "unlabeled_epochs": 20.0, "train/loss": 112.0, "train/log_q_y": -1.1}])
  training = learning_curve.read_training(str(tmp_path / "run"))
  assert sorted(training) == [10, 11, 20]  # whole epochs only
  rows = learning_curve.training_table("s0", training, 3000).splitlines()
  # His log at 3000 labels: loss 120.62 and s_qy -1.41 at epoch 10, 111.29 and -1.20 at 20;
  # epoch 11 is not in it.
  assert rows[2:] == ["| 10 | 120.00 | 120.62 | -0.62 | -1.50 | -1.41 |",
                      "| 20 | 112.00 | 111.29 | +0.71 | -1.10 | -1.20 |"]
