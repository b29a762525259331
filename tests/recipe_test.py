"""The authors' recipe: what poster.py's recipe=authors sets, and one real run of it.

The pieces it uses are tested where they live: its splits in splits_test, its optimizer
in train_state_test, its stream weights, fixed label-only z and Concrete classification
loss in objective_test, its initialiser in models_test.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from untapped_jax import rng as rng_lib
from untapped_jax import train
from untapped_jax.data import mnist as mnist_lib

from real_mnist import REAL_DATA_DIR as DATA_DIR  # real digits or skip
from real_mnist import needs_mnist
from repo_files import POSTER
from repo_files import load_module


poster = load_module(POSTER, "poster_config_for_recipe")


def get(config, dotted):
  for part in dotted.split("."):
    config = config[part]
  return config


# ----------------------------------------------------------------------------- config


AUTHORS = [
    ("data.labeled_per_class", -1), ("data.unlabeled_includes_labeled", True),
    ("data.max_unlabeled", 20000), ("data.binarization", "none"),
    ("data.label_only_source", "classes"), ("data.label_only_batch_size", 10000),
    ("data.labeled_batch_size", 10000), ("data.unlabeled_batch_size", 10000),
    ("objective.label_smoothing", 0.95), ("model.latent_dim", 2),
    ("model.kernel_init", "normal"), ("model.init_stddev", 1e-3),
    ("objective.stream_weighting", "batch_mean"), ("objective.labeled_weight", 0.1),
    ("objective.unlabeled_weight", 0.1), ("objective.classification_weight", 1.0),
    ("objective.label_only_weight", 0.1), ("objective.classification_temperature", 1.0),
    ("objective.label_only", "sleep"), ("objective.sleep_terms", ("log_p_x",)),
    ("objective.label_only_z", "fixed"), ("objective.label_only_num_samples", 1),
    ("train.learning_rate", 1e-3), ("train.adam_eps", 1e-4),
    ("train.clip_global_norm", 5.0), ("train.clip_value", 1.0), ("train.num_steps", 4004),
    ("model_name", "untapped"), ("data.labeled_classes", (0, 1, 2, 3, 4)),
]


@pytest.mark.parametrize("key,value", AUTHORS)
def test_authors_recipe_sets(key, value):
  got = get(poster.get_config("recipe=authors"), key)
  assert (tuple(got) if isinstance(value, tuple) else got) == value, key


def test_ours_recipe_keeps_the_defaults():
  c = poster.get_config("recipe=ours")
  assert c.data.labeled_per_class == 100 and c.data.binarization == "dynamic"
  assert c.objective.stream_weighting == "dataset" and c.objective.label_only == "bound"
  assert c.train.clip_global_norm == 0.0 and c.objective.label_only_z == "prior"


@pytest.mark.parametrize("arg,key,value", [
    ("batch=50", "data.labeled_batch_size", 50), ("batch=50", "data.unlabeled_batch_size", 50),
    ("batch=50", "data.label_only_batch_size", 50), ("steps=123", "train.num_steps", 123),
    ("label_only=consistency", "objective.label_only", "consistency"),
    ("lam=0.5", "objective.label_only_weight", 0.5),
    ("lam=0", "objective.label_only_weight", 0.0),
    ("model=m2", "model_name", "m2"),
])
def test_authors_recipe_overrides(arg, key, value):
  assert get(poster.get_config(f"recipe=authors,{arg}"), key) == value


@pytest.mark.parametrize("arg,named", [
    ("recipe=foo", "recipe='foo'"), ("recipe=authors,per_class=0", "per_class=0"),
    ("per_class=-2", "per_class=-2"), ("recipe=authors,batch=-1", "batch=-1"),
    ("steps=-5", "steps=-5"), ("batch=1.5", "batch=1.5"),
])
def test_bad_values_are_named(arg, named):
  with pytest.raises(ValueError) as e:
    poster.get_config(arg)
  assert named in str(e.value)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@needs_mnist
def test_authors_recipe_end_to_end(tmp_path):
  config = poster.get_config("recipe=authors,batch=50,runlocal")
  config.data.dir = DATA_DIR
  config.eval.evaluator_cache_dir = os.environ.get("UNTAPPED_CACHE_DIR", "") or str(
      tmp_path / "evaluators")
  assert config.eval.semantic
  train.train_and_evaluate(config, str(tmp_path / "run"))
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  for key in ("authors_permutation", "mlp_distinct_digits", "gate_passed",
              "test_log_q_y_direct"):
    assert key in results, key
  assert results["authors_permutation"][:5] == [0, 1, 2, 3, 4]
  assert results["split_sizes"]["label_only"] == 10
  labels = mnist_lib.load_folder(DATA_DIR)["train_labels"]
  validation = rng_lib.numpy_rng(config.seed, rng_lib.Stream.SPLITS).permutation(60000)[
      :config.data.num_validation]
  keep = np.ones(60000, bool)
  keep[validation] = False
  assert results["split_sizes"]["labeled"] == int(np.sum(keep & (labels < 5)))
  assert results["split_sizes"]["unlabeled"] == config.data.max_unlabeled
  assert np.isfinite(results["test_log_q_y_direct"]) and results["test_log_q_y_direct"] < 0
