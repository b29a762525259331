"""End-to-end smoke runs of experiments/configs/poster.py on real MNIST.

Both models are trained for the 'runlocal' 20 steps once per module; the tests
check results.json, samples.npz, the figures and metrics.jsonl against
independent recomputations (a bitmask dynamic programme for the best
assignment, NumPy evaluations of the evaluator and the classifier), and that a
second run of the same config and seed reproduces every number.
"""

from __future__ import annotations

import json
import math
import os

from flax import nnx
import matplotlib.image
import numpy as np
import pytest

from untapped_jax import train
from untapped_jax import train_state

from real_mnist import REAL_DATA_DIR as DATA_DIR  # real digits or skip
from real_mnist import needs_mnist
from repo_files import POSTER
from repo_files import load_module

pytestmark = [pytest.mark.slow,
              needs_mnist]

MODELS = ("m2", "untapped")
M = 20  # runlocal samples_per_class
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESULT_KEYS = ("confusion", "semantic_permutation", "distinct_digits", "duplicated_digits",
               "self_consistency", "heldout_accuracy", "seen_accuracy", "test_accuracy")


def load_poster_config(arg: str, cache_dir: str):
  config = load_module(POSTER, "poster_config").get_config(arg)
  config.data.dir = DATA_DIR
  config.eval.evaluator_cache_dir = cache_dir
  return config


@pytest.fixture(scope="module")
def cache_dirs(session_caches):
  """The session's evaluator cache (conftest.py), which also holds the compiled programs,
  so the repeated run below does not compile again."""
  return session_caches


@pytest.fixture(scope="module")
def runs(cache_dirs, tmp_path_factory):
  out = {}
  for model in MODELS:
    config = load_poster_config(f"model={model},runlocal", cache_dirs)
    workdir = tmp_path_factory.mktemp(f"poster_{model}")
    population = train.train_population([config], [str(workdir)],
                                        checkpoint_dir=str(workdir / "checkpoints"))
    returned = {"graphdef": population.graphdef,
                "best_params": train_state.unstack(population.best_params, 0),
                "splits": population.replicas[0].splits}
    out[model] = {"config": config, "workdir": workdir, "returned": returned,
                  "results": json.loads((workdir / "results.json").read_text())}
  return out


def best_assignment_total(confusion: np.ndarray) -> int:
  """max over permutations of sum_k confusion[k, perm[k]], by DP over column subsets."""
  k = confusion.shape[0]
  best = {0: 0}
  for mask in range(1 << k):
    if mask not in best:
      continue
    row = bin(mask).count("1")
    if row == k:
      continue
    for col in range(k):
      if not mask >> col & 1:
        new = mask | 1 << col
        best[new] = max(best.get(new, -1), best[mask] + int(confusion[row, col]))
  return best[(1 << k) - 1]


def evaluator_params(cache_dir: str):
  (name,) = [f for f in os.listdir(cache_dir) if f.startswith("evaluator_logreg_")]
  with np.load(os.path.join(cache_dir, name)) as f:
    return np.asarray(f["w"], np.float64), np.asarray(f["b"], np.float64)


@pytest.mark.parametrize("model", MODELS)
def test_results_json(runs, model):
  r = runs[model]["results"]
  for key in RESULT_KEYS:
    assert key in r, key
  confusion = np.asarray(r["confusion"])
  assert confusion.shape == (10, 10)
  assert confusion.min() >= 0
  np.testing.assert_array_equal(confusion.sum(1), np.full(10, M))

  perm = r["semantic_permutation"]
  assert sorted(perm) == list(range(10))
  assert sum(confusion[k, perm[k]] for k in range(10)) == best_assignment_total(confusion)

  majority = [int(np.flatnonzero(row == row.max())[0]) for row in confusion]
  assert r["distinct_digits"] == len(set(majority))
  assert r["duplicated_digits"] == sorted(d for d in set(majority) if majority.count(d) > 1)
  for key in ("self_consistency", "heldout_accuracy", "seen_accuracy", "test_accuracy",
              "permuted_test_accuracy"):
    assert 0.0 <= r[key] <= 1.0, (key, r[key])
  assert r["heldout_digits"] == [5, 6, 7, 8, 9]
  assert r["evaluator_test_accuracy"] >= 0.90
  assert r["num_steps"] == 20 and r["seed"] == 0
  sizes = dict(r["split_sizes"])
  assert sizes.pop("label_only") >= 10  # at least each class once
  assert sizes == {"labeled": 500, "unlabeled": 2000, "validation": 1000, "test": 10000}
  for key in ("test_label_only_bound", "test_log_q_y_is", "label_only_gap"):
    assert math.isfinite(r[key]), (key, r[key])
  assert np.all(np.asarray(r["log_q_y_is_per_class"])
                >= np.asarray(r["label_only_bound_per_class"]) - 1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_samples_npz_matches_results(runs, model, cache_dirs):
  r, workdir = runs[model]["results"], runs[model]["workdir"]
  with np.load(workdir / "samples.npz") as f:
    arrays = {k: f[k] for k in f.files}
  x = arrays["x"]
  assert x.shape == (10, M, 784)
  assert set(np.unique(x)) <= {0.0, 1.0}
  assert arrays["x_mean"].shape == (10, M, 784)
  assert np.all((arrays["x_mean"] > 0) & (arrays["x_mean"] < 1))
  # The confusion counts the evaluator's digits of exactly these samples.
  w, b = evaluator_params(cache_dirs)
  digits = np.argmax(x.reshape(-1, 784) @ w + b, -1).reshape(10, M)
  assert np.mean(digits == arrays["evaluator_digits"]) >= 0.99
  manual = np.zeros((10, 10), int)
  for k in range(10):
    for d in arrays["evaluator_digits"][k]:
      manual[k, d] += 1
  np.testing.assert_array_equal(np.asarray(r["confusion"]), manual)
  own = arrays["model_digits"]
  assert r["self_consistency"] == pytest.approx(np.mean(own == np.arange(10)[:, None]))


@pytest.mark.parametrize("model", MODELS)
def test_accuracies_recomputed_from_best_params(runs, model):
  # test_accuracy and the permuted accuracies, recomputed from the returned best
  # parameters on our own Bernoulli draw of the test images (so up to that noise).
  returned, r = runs[model]["returned"], runs[model]["results"]
  net = nnx.merge(returned["graphdef"], returned["best_params"])
  test = returned["splits"].test
  rng = np.random.default_rng(11)
  x = (rng.random(test.images.shape) < test.images / 255.0).astype(np.float32)
  pred = np.concatenate([np.asarray(net.classifier(x[i:i + 2500]).argmax(-1))
                         for i in range(0, len(x), 2500)])
  labels = np.asarray(test.labels)
  assert r["test_accuracy"] == pytest.approx(np.mean(pred == labels), abs=0.02)
  mapped = np.asarray(r["semantic_permutation"])[pred]
  held = labels >= 5
  assert r["heldout_accuracy"] == pytest.approx(np.mean(mapped[held] == labels[held]),
                                                abs=0.03)
  assert r["seen_accuracy"] == pytest.approx(np.mean(mapped[~held] == labels[~held]),
                                             abs=0.03)
  assignment = np.asarray(r["test_digit_assignment"])  # [digit, dimension]
  np.testing.assert_array_equal(assignment.sum(1), np.bincount(labels, minlength=10))

  def counts(p):
    return np.array([[np.sum((labels == d) & (p == k)) for k in range(10)] for d in range(10)])

  # A 20-step classifier has near ties, so a binarisation draw alone moves a few percent
  # of the images: the run's matrix must be as close to ours as two of our draws are.
  x2 = (np.random.default_rng(12).random(test.images.shape) < test.images / 255.0)
  pred2 = np.concatenate([np.asarray(net.classifier(x2[i:i + 2500].astype(np.float32)).argmax(-1))
                          for i in range(0, len(x2), 2500)])
  ours, other = counts(pred), counts(pred2)
  assert np.abs(assignment - ours).sum() <= 1.5 * np.abs(ours - other).sum() + 0.005 * len(labels)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", ["samples_grid.png", "inconsistency.png"])
def test_figures_are_valid_pngs(runs, model, name):
  path = runs[model]["workdir"] / name
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE
  assert len(data) > 10_000, len(data)
  image = matplotlib.image.imread(str(path))
  assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300, image.shape
  assert image[..., :3].std() > 0.05  # not a blank canvas
  assert not [f for f in os.listdir(runs[model]["workdir"]) if ".tmp" in f]


def test_metrics_jsonl_label_only_term_only_for_untapped(runs):
  for model in MODELS:
    lines = [json.loads(line) for line in
             (runs[model]["workdir"] / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20]
    assert "validation/accuracy" in lines[-1]
    has = ["train/label_only_estimate" in line for line in lines]
    if model == "untapped":
      assert all(has)
      assert all(math.isfinite(line["train/label_only_estimate"]) for line in lines)
    else:
      assert not any(has)
    config = json.loads((runs[model]["workdir"] / "config.json").read_text())
    assert config["model_name"] == model
    assert config["data"]["labeled_classes"] == [0, 1, 2, 3, 4]
  # Same data split and seed for both models.
  assert runs["m2"]["results"]["split_sizes"] == runs["untapped"]["results"]["split_sizes"]


def test_same_config_and_seed_give_identical_results(runs, cache_dirs, tmp_path):
  first = runs["untapped"]
  again_dir = tmp_path / "again"
  train.train_and_evaluate(load_poster_config("model=untapped,runlocal", cache_dirs),
                           str(again_dir))
  for name in ("results.json", "metrics.jsonl"):
    assert (first["workdir"] / name).read_bytes() == (again_dir / name).read_bytes(), name
  with np.load(first["workdir"] / "samples.npz") as fa, np.load(again_dir / "samples.npz") as fb:
    assert sorted(fa.files) == sorted(fb.files)
    for key in fa.files:
      np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
