"""Semantic evaluation: what digit does each dimension of y generate?

An independent evaluator (multinomial logistic regression on all 60k MNIST training
labels) classifies images generated from each y dimension; the closest permutation
from dimensions to digits maps the model's classes onto digits for held-out accuracy.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from untapped_jax import files

NUM_DIGITS = 10
# Part of the evaluator cache key: change it whenever train_evaluator's recipe changes.
EVALUATOR_VERSION = "logreg-v1:epochs=15,batch=500,lr=1e-3,l2=1e-4,seed=0,dynamic-binarised"
CACHE_ENV_VAR = "UNTAPPED_CACHE_DIR"


# ----------------------------------------------------------------------------- evaluator


def evaluator_logits(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  """Logistic regression: x [..., 784] in [0, 1] -> digit logits [..., 10]."""
  return x @ params["w"] + params["b"]


def train_evaluator(images: np.ndarray, labels: np.ndarray, *, num_epochs: int = 15,
                    batch_size: int = 500, learning_rate: float = 1e-3,
                    l2: float = 1e-4, seed: int = 0) -> dict[str, np.ndarray]:
  """Fits logistic regression on uint8 images [N, 784], labels [N].

  Each minibatch is freshly binarised (pixels ~ Bernoulli(intensity)), as the
  generated images it will judge are binary samples.
  """
  tx = optax.adam(learning_rate)
  params = {"w": jnp.zeros((images.shape[1], NUM_DIGITS)), "b": jnp.zeros(NUM_DIGITS)}
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x_uint8, y, rng):
    x = jax.random.bernoulli(rng, x_uint8.astype(jnp.float32) / 255.0).astype(jnp.float32)

    def loss_fn(p):
      ce = optax.softmax_cross_entropy_with_integer_labels(evaluator_logits(p, x), y)
      return ce.mean() + l2 * jnp.sum(jnp.square(p["w"]))

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng, key = np.random.default_rng(seed), jax.random.key(seed)
  for epoch in range(num_epochs):
    order = rng.permutation(len(labels))
    for i, start in enumerate(range(0, len(order) - batch_size + 1, batch_size)):
      idx = order[start:start + batch_size]
      params, opt_state = step(params, opt_state, images[idx], labels[idx].astype(np.int32),
                               jax.random.fold_in(key, epoch * 100000 + i))
  return jax.device_get(params)


def evaluator_accuracy(params, images: np.ndarray, labels: np.ndarray, *, seed: int = 0
                       ) -> float:
  """Accuracy on binarised uint8 images (one fixed Bernoulli draw)."""
  x = jax.random.bernoulli(jax.random.key(seed), jnp.asarray(images) / 255.0)
  pred = jnp.argmax(evaluator_logits(params, x.astype(jnp.float32)), -1)
  return float(jnp.mean(pred == jnp.asarray(labels)))


def load_or_train_evaluator(mnist: dict[str, np.ndarray], *, cache_dir: str | None = None
                            ) -> tuple[dict[str, np.ndarray], float]:
  """The evaluator for this MNIST, trained once and cached; returns (params, test acc).

  The cache file is keyed by a hash of the training data, under `cache_dir`
  (default: $UNTAPPED_CACHE_DIR, else ~/.cache/untapped_jax).
  """
  cache_dir = cache_dir or os.environ.get(CACHE_ENV_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "untapped_jax")
  digest = hashlib.sha256(EVALUATOR_VERSION.encode() + mnist["train_images"].tobytes()
                          + mnist["train_labels"].tobytes())
  path = os.path.join(cache_dir, f"evaluator_logreg_{digest.hexdigest()[:16]}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      params = {"w": f["w"], "b": f["b"]}
  else:
    params = train_evaluator(mnist["train_images"], mnist["train_labels"])
    os.makedirs(cache_dir, exist_ok=True)
    with files.atomic_path(path) as tmp:
      np.savez(tmp, **params)
  accuracy = evaluator_accuracy(params, mnist["test_images"], mnist["test_labels"])
  logging.info("evaluator (logistic regression, %s): MNIST test accuracy %.4f", path, accuracy)
  return params, accuracy


# ----------------------------------------------------------------------------- generation


def generate(graphdef: nnx.GraphDef, params, rng: jax.Array, *, num_per_class: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Images from every y dimension: x ~ p(x|e_k, z), z ~ p(z).

  Returns (binary samples, decoder means), both float32 [K, M, D]; row k from e_k.
  """
  model = nnx.merge(graphdef, params)
  k, z_dim = model.num_classes, model.latent_dim
  z_key, x_key = jax.random.split(rng)
  z = jax.random.normal(z_key, (k, num_per_class, z_dim))
  y = jnp.broadcast_to(jnp.eye(k)[:, None, :], (k, num_per_class, k))
  probs = jax.nn.sigmoid(model.decoder(y, z))
  x = jax.random.bernoulli(x_key, probs).astype(jnp.float32)
  return np.asarray(x), np.asarray(probs)


def model_predictions(graphdef: nnx.GraphDef, params, x: np.ndarray, *,
                      batch_size: int = 2000) -> np.ndarray:
  """argmax_y q(y|x) for images x [N, D] -> int [N]."""
  model = nnx.merge(graphdef, params)
  predict = jax.jit(lambda x: jnp.argmax(model.classifier(x), -1))
  return np.concatenate([np.asarray(predict(jnp.asarray(x[i:i + batch_size])))
                         for i in range(0, len(x), batch_size)])


# ----------------------------------------------------------------------------- semantics


def confusion_matrix(digits: np.ndarray, *, num_digits: int = NUM_DIGITS) -> np.ndarray:
  """Counts of evaluator digits per y dimension: digits int [K, M] -> int [K, num_digits]."""
  return np.stack([np.bincount(row, minlength=num_digits) for row in np.asarray(digits)])


def closest_permutation(confusion: np.ndarray) -> np.ndarray:
  """The one-to-one map dimension -> digit that agrees with most generated images.

  confusion int [K, K] -> perm int [K], perm[k] the digit of dimension k
  (scipy's linear_sum_assignment, maximising the matched counts).
  """
  confusion = np.asarray(confusion)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"confusion of shape {confusion.shape}; expected a square [K, K] matrix.")
  rows, cols = scipy.optimize.linear_sum_assignment(confusion, maximize=True)
  perm = np.empty(len(rows), np.int64)
  perm[rows] = cols
  return perm


def majority_digits(confusion: np.ndarray) -> np.ndarray:
  """Each dimension's most generated digit (ties: the smaller digit): [K, D] -> [K]."""
  return np.argmax(np.asarray(confusion), axis=1)


def digit_coverage(confusion: np.ndarray) -> dict[str, Any]:
  """distinct_digits, duplicated_digits (digits claimed by >1 dimension), missing ones."""
  majority = majority_digits(confusion)
  counts = np.bincount(majority, minlength=np.asarray(confusion).shape[1])
  return {"majority_digits": majority.tolist(),
          "distinct_digits": int(np.count_nonzero(counts)),
          "duplicated_digits": np.flatnonzero(counts > 1).tolist(),
          "missing_digits": np.flatnonzero(counts == 0).tolist()}


def permuted_accuracy(predicted_dims: np.ndarray, labels: np.ndarray, perm: np.ndarray,
                      *, digits=None) -> float:
  """Accuracy of perm[predicted dimension] against digit labels, on `digits` only."""
  predicted_dims, labels = np.asarray(predicted_dims), np.asarray(labels)
  mask = np.ones(len(labels), bool) if digits is None else np.isin(labels, digits)
  if not mask.any():
    raise ValueError(f"no test labels among digits {digits}.")
  return float(np.mean(np.asarray(perm)[predicted_dims[mask]] == labels[mask]))


def semantic_report(graphdef, params, evaluator_params, *, test_images: np.ndarray,
                    test_labels: np.ndarray, seen_digits, rng: jax.Array,
                    num_per_class: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Every semantic figure of one model; returns (results, arrays for samples.npz).

  test_images are binarised floats [N, D]; seen_digits are the labeled classes.
  """
  x, x_mean = generate(graphdef, params, rng, num_per_class=num_per_class)
  k, m, d = x.shape
  flat = x.reshape(k * m, d)
  evaluator_digits = np.asarray(jnp.argmax(evaluator_logits(evaluator_params, flat), -1))
  confusion = confusion_matrix(evaluator_digits.reshape(k, m))
  perm = closest_permutation(confusion)
  own = model_predictions(graphdef, params, flat).reshape(k, m)
  predicted = model_predictions(graphdef, params, test_images)
  heldout = [c for c in range(NUM_DIGITS) if c not in set(seen_digits)]
  results = {
      "confusion": confusion.tolist(),
      "semantic_permutation": perm.tolist(),
      **digit_coverage(confusion),
      "self_consistency": float(np.mean(own == np.arange(k)[:, None])),
      "self_consistency_per_dimension": np.mean(own == np.arange(k)[:, None], 1).tolist(),
      "heldout_digits": heldout,
      "heldout_accuracy": permuted_accuracy(predicted, test_labels, perm, digits=heldout)
                          if heldout else float("nan"),
      "seen_accuracy": permuted_accuracy(predicted, test_labels, perm, digits=seen_digits),
      "permuted_test_accuracy": permuted_accuracy(predicted, test_labels, perm),
  }
  arrays = {"x": x.reshape(k, m, d), "x_mean": x_mean, "evaluator_digits":
            evaluator_digits.reshape(k, m), "model_digits": own}
  return results, arrays
