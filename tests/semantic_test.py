"""Tests of evaluate/semantic.py.

The assignment is checked against brute force over every permutation, counts
against hand counts, the evaluator against a NumPy re-computation of its test
accuracy on real MNIST, and generation against hand-set decoders whose output is
known in closed form.
"""

from __future__ import annotations

import hashlib
import itertools
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from untapped_jax.data import mnist as mnist_lib
from untapped_jax.evaluate import evaluator as evaluator_lib
from untapped_jax.evaluate import generation
from untapped_jax.evaluate import semantic
from untapped_jax.models import M2

from real_mnist import REAL_DATA_DIR as DATA_DIR  # real digits or skip
from real_mnist import needs_mnist



def brute_force_best(confusion: np.ndarray) -> int:
  """The largest matched total over all K! one-to-one maps."""
  k = confusion.shape[0]
  return max(sum(confusion[i, p[i]] for i in range(k)) for p in itertools.permutations(range(k)))


def matched(confusion, perm) -> int:
  return int(sum(confusion[i, perm[i]] for i in range(len(perm))))


def assert_is_permutation(perm, k):
  assert sorted(np.asarray(perm).tolist()) == list(range(k)), perm


def set_param(param, value):
  param[...] = jnp.asarray(value, jnp.float32)


# ----------------------------------------------------------------------------- assignment


def test_closest_permutation_identity():
  confusion = np.eye(10, dtype=int) * 50 + 3
  perm = semantic.closest_permutation(confusion)
  np.testing.assert_array_equal(perm, np.arange(10))
  assert perm.dtype.kind == "i"


def test_closest_permutation_recovers_a_known_permutation():
  rng = np.random.default_rng(0)
  true_perm = rng.permutation(10)
  confusion = rng.integers(0, 5, size=(10, 10))
  confusion[np.arange(10), true_perm] += 40  # dimension k mostly generates true_perm[k]
  np.testing.assert_array_equal(semantic.closest_permutation(confusion), true_perm)


def test_closest_permutation_beats_greedy_row_argmax():
  # Rows 0 and 1 both prefer digit 0 (greedy argmax would duplicate it). Giving 0 to
  # row 0 costs row 1 nine; giving 0 to row 1 costs row 0 one: the optimum is forced.
  confusion = np.array([[10, 9, 0],
                        [11, 2, 0],
                        [0, 0, 5]])
  assert np.argmax(confusion, 1).tolist() == [0, 0, 2]  # greedy: digit 0 twice
  perm = semantic.closest_permutation(confusion)
  np.testing.assert_array_equal(perm, [1, 0, 2])
  assert matched(confusion, perm) == brute_force_best(confusion) == 25


def test_closest_permutation_forced_chain_6x6():
  # Every row's argmax is digit 0; only one assignment reaches the optimum.
  confusion = np.array([[9, 8, 0, 0, 0, 0],
                        [9, 0, 8, 0, 0, 0],
                        [9, 0, 0, 8, 0, 0],
                        [9, 0, 0, 0, 8, 0],
                        [9, 0, 0, 0, 0, 8],
                        [9, 0, 0, 0, 0, 0]])
  perm = semantic.closest_permutation(confusion)
  assert matched(confusion, perm) == brute_force_best(confusion) == 9 + 5 * 8
  np.testing.assert_array_equal(perm, [1, 2, 3, 4, 5, 0])


@pytest.mark.parametrize("k", [4, 5, 6])
def test_closest_permutation_is_optimal_on_random_matrices(k):
  rng = np.random.default_rng(k)
  for _ in range(8):
    confusion = rng.integers(0, 30, size=(k, k))
    perm = semantic.closest_permutation(confusion)
    assert_is_permutation(perm, k)
    assert matched(confusion, perm) == brute_force_best(confusion)


def test_closest_permutation_ties():
  # All-equal: any permutation is optimal; the result must still be one-to-one.
  flat = np.full((5, 5), 7)
  perm = semantic.closest_permutation(flat)
  assert_is_permutation(perm, 5)
  # Two optimal assignments (total 20 either way): a valid optimum is returned.
  tied = np.array([[10, 10, 0], [10, 10, 0], [0, 0, 0]])
  perm = semantic.closest_permutation(tied)
  assert_is_permutation(perm, 3)
  assert matched(tied, perm) == brute_force_best(tied) == 20
  assert perm[2] == 2


@pytest.mark.parametrize("shape", [(10, 9), (3, 4), (10,), (2, 2, 2)])
def test_closest_permutation_rejects_non_square(shape):
  with pytest.raises(ValueError, match="square"):
    semantic.closest_permutation(np.ones(shape))


# ----------------------------------------------------------------------------- coverage


def test_majority_digits_ties_go_to_smaller_digit():
  confusion = np.array([[0, 5, 5, 0],   # tie 1/2 -> 1
                        [3, 3, 3, 3],   # 4-way tie -> 0
                        [0, 0, 2, 2],   # tie 2/3 -> 2
                        [1, 0, 0, 9]])
  np.testing.assert_array_equal(semantic.majority_digits(confusion), [1, 0, 2, 3])


def test_digit_coverage_with_duplicates_and_missing():
  # Ten dimensions, rows 3 and 7 both mostly generate 8; digit 3 is never the majority.
  confusion = np.eye(10, dtype=int) * 20
  confusion[3] = 0
  confusion[3, 8] = 15
  confusion[3, 3] = 5
  confusion[7] = 0
  confusion[7, 8] = 12
  confusion[7, 7] = 12  # tie between 7 and 8 -> 7 (smaller)
  cov = semantic.digit_coverage(confusion)
  expected_majority = [0, 1, 2, 8, 4, 5, 6, 7, 8, 9]
  assert cov["majority_digits"] == expected_majority
  assert cov["duplicated_digits"] == [8]
  assert cov["missing_digits"] == [3]
  assert cov["distinct_digits"] == 9 == len(set(expected_majority))

  confusion[7, 8] = 13  # now row 7 -> 8 as well: 8 claimed three times
  cov = semantic.digit_coverage(confusion)
  assert cov["majority_digits"].count(8) == 3
  assert cov["duplicated_digits"] == [8]
  assert cov["missing_digits"] == [3, 7]
  assert cov["distinct_digits"] == 8


def test_digit_coverage_two_duplicates():
  majority = [0, 0, 1, 1, 4, 5, 6, 7, 8, 9]
  confusion = np.zeros((10, 10), int)
  confusion[np.arange(10), majority] = 10
  cov = semantic.digit_coverage(confusion)
  assert cov["duplicated_digits"] == [0, 1]
  assert cov["missing_digits"] == [2, 3]
  assert cov["distinct_digits"] == 8
  assert all(isinstance(v, int) for v in cov["majority_digits"])


# ----------------------------------------------------------------------------- counts


def test_confusion_matrix_matches_hand_count():
  rng = np.random.default_rng(3)
  digits = rng.integers(0, 10, size=(10, 37))
  digits[4] = 6  # one row entirely a single digit
  confusion = semantic.confusion_matrix(digits)
  manual = np.zeros((10, 10), int)
  for k in range(10):
    for d in digits[k]:
      manual[k, d] += 1
  np.testing.assert_array_equal(confusion, manual)
  assert confusion.shape == (10, 10)
  np.testing.assert_array_equal(confusion.sum(1), np.full(10, 37))
  assert confusion[4, 6] == 37


def test_confusion_matrix_pads_missing_digits():
  confusion = semantic.confusion_matrix(np.array([[0, 0, 1], [2, 2, 2]]), num_digits=5)
  np.testing.assert_array_equal(confusion, [[2, 1, 0, 0, 0], [0, 0, 3, 0, 0]])


def test_permuted_accuracy_by_hand():
  perm = np.array([2, 0, 1])  # dimension 0 -> digit 2, 1 -> 0, 2 -> 1
  predicted = np.array([0, 1, 2, 0, 1, 2, 2])
  labels = np.array([2, 0, 1, 1, 0, 0, 1])
  # mapped:            2  0  1  2  0  1  1  -> correct: T T T F T F T = 5/7
  assert semantic.permuted_accuracy(predicted, labels, perm) == pytest.approx(5 / 7)
  # digits (1,): labels==1 at positions 2, 3, 6 -> mapped 1, 2, 1 -> 2/3
  assert semantic.permuted_accuracy(predicted, labels, perm, digits=(1,)) == pytest.approx(2 / 3)
  # digits (0, 2): positions 0, 1, 4, 5 -> 2 0 0 1 vs 2 0 0 0 -> 3/4
  assert semantic.permuted_accuracy(predicted, labels, perm, digits=[0, 2]) == pytest.approx(
      3 / 4)
  # The identity map is ordinary accuracy.
  assert semantic.permuted_accuracy(predicted, labels, np.arange(3)) == pytest.approx(
      np.mean(predicted == labels))


def test_permuted_accuracy_empty_subset_raises():
  with pytest.raises(ValueError, match="no test labels"):
    semantic.permuted_accuracy(np.array([0, 1]), np.array([0, 1]), np.arange(10),
                               digits=(5, 6))
  with pytest.raises(ValueError):
    semantic.permuted_accuracy(np.array([0, 1]), np.array([0, 1]), np.arange(10), digits=())


# ----------------------------------------------------------------------------- evaluator


@pytest.fixture(scope="module")
def mnist_data():
  if not DATA_DIR:
    pytest.skip("set UNTAPPED_DATA_DIR to real MNIST")
  return mnist_lib.load_folder(DATA_DIR)


@pytest.fixture(scope="module")
def evaluator_cache_dir(session_caches):
  # The session's folder (conftest.py), so each evaluator is trained once; never ~/.cache.
  return session_caches


@pytest.fixture(scope="module")
def evaluator(mnist_data, evaluator_cache_dir):
  return evaluator_lib.load_or_train_evaluator(mnist_data, cache_dir=evaluator_cache_dir)


def numpy_evaluator_accuracy(params, images, labels, seed):
  rng = np.random.default_rng(seed)
  x = (rng.random(images.shape) < images / 255.0).astype(np.float32)
  pred = np.argmax(x @ np.asarray(params["w"]) + np.asarray(params["b"]), -1)
  return float(np.mean(pred == labels)), x


@pytest.mark.slow
@needs_mnist
def test_evaluator_reaches_90_percent_on_mnist_test(evaluator, mnist_data):
  params, reported = evaluator
  assert params["w"].shape == (784, 10) and params["b"].shape == (10,)
  acc, _ = numpy_evaluator_accuracy(params, mnist_data["test_images"],
                                    mnist_data["test_labels"], seed=1)
  assert acc >= 0.90, acc
  # The reported figure is the same quantity on another Bernoulli draw.
  assert abs(reported - acc) < 0.01, (reported, acc)
  # Generated images are binary: on static (thresholded) images it works too.
  x = (mnist_data["test_images"] > 127).astype(np.float32)
  pred = np.argmax(x @ params["w"] + params["b"], -1)
  assert np.mean(pred == mnist_data["test_labels"]) >= 0.88


@pytest.mark.slow
@needs_mnist
def test_evaluator_is_cached_and_not_retrained(evaluator, mnist_data, evaluator_cache_dir,
                                                monkeypatch):
  params, accuracy = evaluator
  digest = hashlib.sha256(evaluator_lib.RECIPES["logreg"].cache_key().encode()
                          + mnist_data["train_images"].tobytes()
                          + mnist_data["train_labels"].tobytes()).hexdigest()[:16]
  path = os.path.join(evaluator_cache_dir, f"evaluator_logreg_{digest}.npz")
  assert os.path.exists(path)
  assert not [f for f in os.listdir(evaluator_cache_dir) if "tmp" in f]
  with np.load(path) as f:
    np.testing.assert_array_equal(f["w"], params["w"])

  def no_training(*args, **kwargs):
    raise AssertionError("train_evaluator called although the cache file exists")

  monkeypatch.setattr(evaluator_lib, "train_evaluator", no_training)
  again, accuracy_again = evaluator_lib.load_or_train_evaluator(mnist_data,
                                                           cache_dir=evaluator_cache_dir)
  np.testing.assert_array_equal(again["w"], params["w"])
  np.testing.assert_array_equal(again["b"], params["b"])
  assert accuracy_again == accuracy
  # The default folder is $UNTAPPED_CACHE_DIR (set by the fixture): same file, no training.
  from_env, _ = evaluator_lib.load_or_train_evaluator(mnist_data)
  np.testing.assert_array_equal(from_env["w"], params["w"])


def test_evaluator_cache_is_keyed_by_training_data(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  data = {"train_images": rng.integers(0, 256, (30, 784), dtype=np.uint8),
          "train_labels": rng.integers(0, 10, 30).astype(np.uint8),
          "test_images": rng.integers(0, 256, (20, 784), dtype=np.uint8),
          "test_labels": rng.integers(0, 10, 20).astype(np.uint8)}
  calls = []

  def fake_train(images, labels, recipe):
    assert recipe == evaluator_lib.RECIPES["logreg"]  # what is cached is what it trains
    calls.append(len(labels))
    return {"w": np.full((784, 10), float(len(calls)), np.float32),
            "b": np.arange(10, dtype=np.float32)}

  monkeypatch.setattr(evaluator_lib, "train_evaluator", fake_train)
  monkeypatch.setenv(evaluator_lib.CACHE_ENV_VAR, str(tmp_path / "env_cache"))
  first, _ = evaluator_lib.load_or_train_evaluator(data)  # cache_dir from the env var
  assert calls == [30]
  assert len([n for n in os.listdir(tmp_path / "env_cache") if n.endswith(".npz")]) == 1
  second, _ = evaluator_lib.load_or_train_evaluator(data)
  assert calls == [30]
  np.testing.assert_array_equal(first["w"], second["w"])
  # Other training labels: another file, trained afresh.
  other = dict(data, train_labels=(data["train_labels"] + 1) % 10)
  third, _ = evaluator_lib.load_or_train_evaluator(other)
  assert calls == [30, 30]
  assert len([n for n in os.listdir(tmp_path / "env_cache") if n.endswith(".npz")]) == 2
  assert third["w"][0, 0] == 2.0


# ----------------------------------------------------------------------------- generation


@pytest.mark.slow
def test_generate_rows_come_from_their_own_label():
  # Decoder: relu(W0 [y; z]) with W0 = [I; 0] gives h = e_k, and the second layer
  # maps e_k to the logits table L[k]: p(x|e_k, z) = sigmoid(L[k]) whatever z is.
  d, k, z_dim, m = 8, 4, 3, 2000
  model = M2(num_pixels=d, num_classes=k, latent_dim=z_dim, hidden=(k,), activation="relu",
             rngs=nnx.Rngs(0))
  table = np.random.default_rng(0).normal(0.0, 2.0, (k, d)).astype(np.float32)
  first, second = model.decoder.net.layers
  set_param(first.kernel, np.concatenate([np.eye(k), np.zeros((z_dim, k))]))
  set_param(first.bias, np.zeros(k))
  set_param(second.kernel, table)
  set_param(second.bias, np.zeros(d))
  graphdef, params = nnx.split(model)

  x, x_mean = generation.generate(graphdef, params, jax.random.key(1), num_per_class=m)
  assert x.shape == x_mean.shape == (k, m, d)
  assert x.dtype == np.float32 and x_mean.dtype == np.float32
  assert set(np.unique(x)) <= {0.0, 1.0}
  expected = 1.0 / (1.0 + np.exp(-table.astype(np.float64)))
  np.testing.assert_allclose(x_mean, np.broadcast_to(expected[:, None], (k, m, d)),
                             rtol=1e-5, atol=1e-6)
  # Samples are Bernoulli(sigmoid(L[k])): per-pixel frequencies within 5 sigma.
  freq = x.mean(1)
  sigma = np.sqrt(expected * (1 - expected) / m)
  assert np.all(np.abs(freq - expected) < 5 * sigma + 1e-3)
  # Same key, same images; another key, other images.
  x2, _ = generation.generate(graphdef, params, jax.random.key(1), num_per_class=m)
  np.testing.assert_array_equal(x, x2)
  x3, _ = generation.generate(graphdef, params, jax.random.key(2), num_per_class=m)
  assert not np.array_equal(x, x3)


@pytest.mark.slow
def test_generate_random_model_shapes_and_z_dependence():
  model = M2(num_pixels=784, num_classes=10, latent_dim=5, hidden=(16,), rngs=nnx.Rngs(3))
  graphdef, params = nnx.split(model)
  x, x_mean = generation.generate(graphdef, params, jax.random.key(0), num_per_class=7)
  assert x.shape == x_mean.shape == (10, 7, 784)
  assert set(np.unique(x)) <= {0.0, 1.0}
  assert np.all((x_mean > 0) & (x_mean < 1))
  # z ~ p(z) differs across the M images of a row, so their means differ.
  assert not np.allclose(x_mean[0, 0], x_mean[0, 1])


# ----------------------------------------------------------------------------- report


@pytest.mark.slow
@needs_mnist
def test_semantic_report_with_a_hand_built_model(evaluator, mnist_data):
  # A model whose decoder draws digit perm[k] for y = e_k (pixel probabilities =
  # that digit's mean image), and whose classifier is the evaluator with its
  # outputs reordered to dimensions: the report must find perm, all ten digits,
  # and held-out accuracy equal to the evaluator's own on digits 5-9.
  ev_params, _ = evaluator
  w, b = np.asarray(ev_params["w"]), np.asarray(ev_params["b"])
  perm = np.array([3, 7, 0, 9, 1, 5, 8, 2, 6, 4])
  k, z_dim, m = 10, 4, 100
  model = M2(num_pixels=784, num_classes=k, latent_dim=z_dim, hidden=(k,), activation="relu",
             rngs=nnx.Rngs(0))
  images, labels = mnist_data["train_images"], mnist_data["train_labels"]
  means = np.stack([images[labels == d].mean(0) / 255.0 for d in range(10)])
  means = np.clip(means, 1e-3, 1 - 1e-3)
  first, second = model.decoder.net.layers
  set_param(first.kernel, np.concatenate([np.eye(k), np.zeros((z_dim, k))]))
  set_param(first.bias, np.zeros(k))
  set_param(second.kernel, np.log(means[perm]) - np.log1p(-means[perm]))
  set_param(second.bias, np.zeros(784))
  # Classifier dimension j scores digit perm[j]; a large offset keeps relu linear.
  c_first, c_second = model.classifier.net.layers
  set_param(c_first.kernel, w[:, perm])
  set_param(c_first.bias, b[perm] + 1000.0)
  set_param(c_second.kernel, np.eye(k))
  set_param(c_second.bias, np.zeros(k))
  graphdef, params = nnx.split(model)

  _, test_x = numpy_evaluator_accuracy(ev_params, mnist_data["test_images"][:3000],
                                       mnist_data["test_labels"][:3000], seed=5)
  test_labels = mnist_data["test_labels"][:3000].astype(np.int32)
  results, arrays = semantic.semantic_report(
      graphdef, params, {"logreg": ev_params},
      semantic.EvaluationData(test_images=test_x, test_labels=test_labels,
                              seen_digits=(0, 1, 2, 3, 4)),
      rng=jax.random.key(0), num_per_class=m)

  assert results["semantic_permutation"] == perm.tolist()
  assert results["distinct_digits"] == 10
  assert results["duplicated_digits"] == [] and results["missing_digits"] == []
  confusion = np.asarray(results["confusion"])
  assert confusion.shape == (10, 10)
  np.testing.assert_array_equal(confusion.sum(1), np.full(10, m))
  # The confusion counts the returned evaluator digits; those agree with a NumPy
  # evaluation of the returned samples (up to float32 near-ties).
  x = arrays["x"]
  assert x.shape == (10, m, 784)
  manual = np.zeros((10, 10), int)
  for row in range(10):
    for digit in arrays["evaluator_digits"][row]:
      manual[row, digit] += 1
  np.testing.assert_array_equal(confusion, manual)
  ev_digits = np.argmax(x.reshape(-1, 784).astype(np.float64) @ w + b, -1).reshape(10, m)
  assert np.mean(arrays["evaluator_digits"] == ev_digits) >= 0.995
  # The classifier agrees with the evaluator, so dimension k's samples return to k
  # exactly when the evaluator calls them perm[k].
  assert np.mean(arrays["model_digits"] == np.argsort(perm)[ev_digits]) >= 0.995
  assert results["self_consistency"] == pytest.approx(
      np.mean(arrays["model_digits"] == np.arange(10)[:, None]), abs=1e-9)
  assert results["self_consistency"] == pytest.approx(
      np.mean(ev_digits == perm[:, None]), abs=0.005)
  # Held-out / seen accuracy = the evaluator's own accuracy on those digits.
  ev_pred = np.argmax(test_x @ w + b, -1)
  heldout = np.isin(test_labels, [5, 6, 7, 8, 9])
  assert results["heldout_digits"] == [5, 6, 7, 8, 9]
  assert results["heldout_accuracy"] == pytest.approx(
      np.mean(ev_pred[heldout] == test_labels[heldout]), abs=1e-3)
  assert results["seen_accuracy"] == pytest.approx(
      np.mean(ev_pred[~heldout] == test_labels[~heldout]), abs=1e-3)
  assert results["permuted_test_accuracy"] == pytest.approx(
      np.mean(ev_pred == test_labels), abs=1e-3)
  assert results["heldout_accuracy"] > 0.8


def test_evaluator_cache_key_follows_every_recipe_field():
  import dataclasses  # pylint: disable=g-import-not-at-top
  recipe = evaluator_lib.RECIPES["mlp"]
  keys = {recipe.cache_key()}
  for field, value in (("hidden", (512,)), ("num_epochs", 21), ("batch_size", 200),
                       ("learning_rate", 3e-4), ("l2", 0.0), ("seed", 1), ("version", 2)):
    keys.add(dataclasses.replace(recipe, **{field: value}).cache_key())
  assert len(keys) == 8
  assert evaluator_lib.RECIPES["logreg"].cache_key() != recipe.cache_key()


@pytest.mark.parametrize("epochs", ["0", "two", "-1"])
def test_bad_mlp_evaluator_epochs_are_one_line_naming_the_value(epochs, monkeypatch, tmp_path):
  monkeypatch.setenv(evaluator_lib.MLP_EPOCHS_ENV_VAR, epochs)
  with pytest.raises(ValueError, match=f"UNTAPPED_MLP_EVALUATOR_EPOCHS={epochs!r}"):
    evaluator_lib.load_or_train_evaluator({}, cache_dir=str(tmp_path), kind="mlp")
  assert list(tmp_path.iterdir()) == []
