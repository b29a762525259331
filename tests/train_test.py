"""End-to-end training on real MNIST (UNTAPPED_DATA_DIR): a short run learns.

Same config and seed, same bytes, and exact resume are kill_test's (a run and a sweep,
killed and resumed in other processes against an uninterrupted one) and population_test's
(a population stopped and resumed in process)."""

import json
import resource
import sys

import pytest

from untapped_jax import train
from untapped_jax.configs import default

from real_mnist import REAL_DATA_DIR as DATA_DIR  # real digits or skip
from real_mnist import needs_mnist

pytestmark = [pytest.mark.slow,
              needs_mnist]


def small_config(**train_overrides):
  c = default.get_config()
  c.data.dir = DATA_DIR
  c.data.source = "folder"
  c.data.num_validation = 2000
  c.data.max_unlabeled = 20000
  c.data.labeled_per_class = 100  # 1000 labels
  c.model.hidden = (200,)  # the step and final evaluation at 2/5 of the default width
  c.objective.classification_weight = 1.0  # as experiments/configs/m2_benchmark.py
  c.train.learning_rate = 1e-3
  c.train.num_steps = 400
  c.train.log_every = 100
  c.train.eval_every = 200
  c.train.checkpoint_every = 0
  c.train.progress_bar = False
  c.train.update(train_overrides)
  return c


def test_short_training_run_learns_to_classify(tmp_path):
  # 400 steps with 1000 labels: chance is 10%, a broken bound or a classifier
  # cut off from its gradients stays far below 80%.
  results = train.train_and_evaluate(small_config(), str(tmp_path))
  assert results["test_accuracy"] > 0.80, results["test_accuracy"]
  on_disk = json.load(open(tmp_path / "results.json"))
  assert on_disk["test_accuracy"] == results["test_accuracy"]
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [100, 200, 300, 400]
  assert "validation/accuracy" in lines[1] and "validation/accuracy" not in lines[0]
  # The bounds improve from the first to the last log step.
  assert lines[-1]["train/unlabeled_bound"] > lines[0]["train/unlabeled_bound"] + 20
  assert -250 < results["test_unlabeled_bound"] < -60
  assert json.load(open(tmp_path / "config.json"))["train"]["num_steps"] == 400
  # timing.json: where the process's time went. The phases are disjoint parts of it, and
  # the first step, which compiles the step, costs more than an average later step.
  timing = json.load(open(tmp_path / "timing.json"))
  assert timing["num_steps"] == 400
  for key in ("startup_s", "first_step_s", "train_wall_s", "final_evaluation_s"):
    assert timing[key] > 0, key
  assert (timing["startup_s"] + timing["train_wall_s"] + timing["final_evaluation_s"]
          <= timing["process_s"] + 1e-6)
  assert timing["first_step_s"] > (timing["train_wall_s"] - timing["first_step_s"]) / 399
  # The process's peak resident memory, in MiB: JAX, MNIST and the step's buffers, at
  # most this test process's own peak now (the run was in it), read by the test itself.
  own_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
      2**20 if sys.platform == "darwin" else 2**10)
  assert 200 < timing["peak_rss_mb"] <= own_peak_mib
