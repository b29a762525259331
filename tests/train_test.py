"""End-to-end training on real MNIST (UNTAPPED_DATA_DIR)."""

import json

import jax
import numpy as np
import pytest

from untapped_jax import train
from untapped_jax.configs import default

from real_mnist import DATA_DIR
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


def test_same_seed_same_numbers_and_resume_is_exact(tmp_path):
  c = small_config(num_steps=30, log_every=10, eval_every=30)
  c.data.max_unlabeled = 2000
  full = train.train_and_evaluate(c, str(tmp_path / "a"))
  again = train.train_and_evaluate(c, str(tmp_path / "b"))
  assert full["test_accuracy"] == again["test_accuracy"]
  assert full["test_unlabeled_bound"] == again["test_unlabeled_bound"]
  # Stop at step 20 with a checkpoint, then resume to 30 from it.
  c_resume = small_config(num_steps=20, log_every=10, eval_every=30, checkpoint_every=10)
  c_resume.data.max_unlabeled = 2000
  train.train_and_evaluate(c_resume, str(tmp_path / "c"))
  c_resume.train.num_steps = 30
  resumed = train.train_population([c_resume], [str(tmp_path / "c")],
                                   checkpoint_dir=str(tmp_path / "c" / "checkpoints"))
  full = train.train_population([c], [str(tmp_path / "d")],
                                checkpoint_dir=str(tmp_path / "d" / "checkpoints"))
  leaves = lambda r: jax.tree.leaves(jax.device_get(r.state))
  assert int(resumed.state.step[0]) == 30
  # The resumed run's log has each step once, with the uninterrupted run's training
  # numbers (the 20-step run also validated at its last step, 20).
  strip = lambda path: [{k: v for k, v in json.loads(l).items()
                         if not k.startswith("validation/")}
                        for l in open(path)]
  assert strip(tmp_path / "c" / "metrics.jsonl") == strip(tmp_path / "d" / "metrics.jsonl")
  assert [l["step"] for l in strip(tmp_path / "c" / "metrics.jsonl")] == [10, 20, 30]
  for a, b in zip(leaves(full), leaves(resumed)):
    np.testing.assert_array_equal(jax.random.key_data(a) if jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key) else a, jax.random.key_data(b) if jax.dtypes.issubdtype(
            b.dtype, jax.dtypes.prng_key) else b)
