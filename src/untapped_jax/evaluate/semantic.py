"""Semantic evaluation: what digit does each dimension of y generate?

An independent evaluator (multinomial logistic regression on all 60k MNIST training
labels) classifies images generated from each y dimension; the closest permutation
from dimensions to digits maps the model's classes onto digits for held-out accuracy.
"""

from __future__ import annotations

import collections
import functools
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
from untapped_jax import workdir_lock
from untapped_jax.data import streams as streams_lib

NUM_DIGITS = 10
# Part of the evaluator cache key: change it whenever train_evaluator's recipe changes.
EVALUATOR_VERSION = "logreg-v1:epochs=15,batch=500,lr=1e-3,l2=1e-4,seed=0,dynamic-binarised"
CACHE_ENV_VAR = "UNTAPPED_CACHE_DIR"


# ----------------------------------------------------------------------------- evaluator


MLP_EVALUATOR_VERSION = "mlp-v1:hidden=512x2,relu,epochs=20,batch=250,lr=1e-3,l2=1e-5,seed=0"
EVALUATORS = ("logreg", "mlp")


def evaluator_logits(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  """x [..., 784] in [0, 1] -> digit logits [..., 10].

  Logistic regression for params {'w', 'b'}; a ReLU MLP for {'w0', 'b0', 'w1', ...}.
  """
  if "w" in params:
    return x @ params["w"] + params["b"]
  num_layers = len(params) // 2
  h = x
  for i in range(num_layers):
    h = h @ params[f"w{i}"] + params[f"b{i}"]
    if i < num_layers - 1:
      h = jax.nn.relu(h)
  return h


def _init_evaluator(kind: str, num_pixels: int, seed: int) -> dict[str, jax.Array]:
  if kind == "logreg":
    return {"w": jnp.zeros((num_pixels, NUM_DIGITS)), "b": jnp.zeros(NUM_DIGITS)}
  sizes = [num_pixels, 512, 512, NUM_DIGITS]
  keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
  params = {}
  for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
    params[f"w{i}"] = jax.random.normal(keys[i], (a, b)) * np.sqrt(2.0 / a)
    params[f"b{i}"] = jnp.zeros(b)
  return params


def train_evaluator(images: np.ndarray, labels: np.ndarray, *, kind: str = "logreg",
                    num_epochs: int | None = None, batch_size: int | None = None,
                    learning_rate: float = 1e-3, l2: float | None = None,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Fits the evaluator `kind` on uint8 images [N, 784], labels [N].

  'logreg': multinomial logistic regression (15 epochs, batch 500, l2 1e-4);
  'mlp': two hidden layers of 512 ReLUs (20 epochs, batch 250, l2 1e-5).
  Each minibatch is freshly binarised (pixels ~ Bernoulli(intensity)), as the
  generated images it will judge are binary samples.
  """
  if kind not in EVALUATORS:
    raise ValueError(f"evaluator kind={kind!r}; expected one of {EVALUATORS}.")
  defaults = {"logreg": (15, 500, 1e-4), "mlp": (20, 250, 1e-5)}[kind]
  num_epochs = num_epochs or defaults[0]
  batch_size = batch_size or defaults[1]
  l2 = defaults[2] if l2 is None else l2
  tx = optax.adam(learning_rate)
  params = _init_evaluator(kind, images.shape[1], seed)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x_uint8, y, rng):
    x = streams_lib.binarize(x_uint8, rng, mode="dynamic")

    def loss_fn(p):
      ce = optax.softmax_cross_entropy_with_integer_labels(evaluator_logits(p, x), y)
      weights = [v for name, v in p.items() if name.startswith("w")]
      return ce.mean() + l2 * sum(jnp.sum(jnp.square(w)) for w in weights)

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
  x = streams_lib.binarize(jnp.asarray(images), jax.random.key(seed), mode="dynamic")
  pred = jnp.argmax(evaluator_logits(params, x), -1)
  return float(jnp.mean(pred == jnp.asarray(labels)))


def load_or_train_evaluator(mnist: dict[str, np.ndarray], *, cache_dir: str | None = None,
                            kind: str = "logreg") -> tuple[dict[str, np.ndarray], float]:
  """The evaluator `kind` for this MNIST, trained once and cached; returns (params, test acc).

  The cache file is keyed by a hash of the recipe and the training data, under
  `cache_dir` (default: $UNTAPPED_CACHE_DIR, else ~/.cache/untapped_jax).
  """
  if kind not in EVALUATORS:
    raise ValueError(f"evaluator kind={kind!r}; expected one of {EVALUATORS}.")
  cache_dir = cache_dir or os.environ.get(CACHE_ENV_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "untapped_jax")
  version = EVALUATOR_VERSION if kind == "logreg" else MLP_EVALUATOR_VERSION
  digest = hashlib.sha256(version.encode() + mnist["train_images"].tobytes()
                          + mnist["train_labels"].tobytes())
  path = os.path.join(cache_dir, f"evaluator_{kind}_{digest.hexdigest()[:16]}.npz")
  # Processes sharing the cache (a sweep's shards, parallel test workers) wait for the
  # first to train it instead of all training the same evaluator.
  with workdir_lock.hold(cache_dir, wait=True):
    if os.path.exists(path):
      with np.load(path) as f:
        params = {name: f[name] for name in f.files}
    else:
      params = train_evaluator(mnist["train_images"], mnist["train_labels"], kind=kind)
      with files.atomic_path(path) as tmp:
        np.savez(tmp, **params)
  accuracy = evaluator_accuracy(params, mnist["test_images"], mnist["test_labels"])
  logging.info("evaluator (%s, %s): MNIST test accuracy %.4f", kind, path, accuracy)
  return params, accuracy


# ----------------------------------------------------------------------------- generation


def generate(graphdef: nnx.GraphDef, params, rng: jax.Array, *, num_per_class: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Images from every y dimension: x ~ p(x|e_k, z), z ~ p(z).

  Returns (binary samples, decoder means), both float32 [K, M, D]; row k from e_k.
  """
  x, probs = _generate(graphdef, params, rng, num_per_class=num_per_class)
  return np.asarray(x), np.asarray(probs)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_per_class"))
def _generate(graphdef: nnx.GraphDef, params, rng: jax.Array, *, num_per_class: int):
  model = nnx.merge(graphdef, params)
  k, z_dim = model.num_classes, model.latent_dim
  z_key, x_key = jax.random.split(rng)
  z = jax.random.normal(z_key, (k, num_per_class, z_dim))
  y = jnp.broadcast_to(jnp.eye(k)[:, None, :], (k, num_per_class, k))
  probs = jax.nn.sigmoid(model.decoder(y, z))
  return jax.random.bernoulli(x_key, probs).astype(jnp.float32), probs


def model_predictions(graphdef: nnx.GraphDef, params, x: np.ndarray, *,
                      batch_size: int = 2000) -> np.ndarray:
  """argmax_y q(y|x) for images x [N, D] -> int [N]."""
  return np.concatenate([np.asarray(jnp.argmax(classifier_logits(
      graphdef, params, jnp.asarray(x[i:i + batch_size])), -1))
                         for i in range(0, len(x), batch_size)])


@functools.partial(jax.jit, static_argnums=0)
def classifier_logits(graphdef: nnx.GraphDef, params, x: jax.Array) -> jax.Array:
  """q(y|x)'s logits [N, K] for x [N, D]; compiled once per graph and shape, with the
  parameters as arguments (never baked in as constants)."""
  return nnx.merge(graphdef, params).classifier(x)


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


def confusion_semantics(confusion: np.ndarray, *, seen_digits=(),
                        ownership_threshold: float = 0.5) -> dict[str, Any]:
  """Everything read off one confusion matrix of generated samples [K, K] (counts).

  - semantic_permutation: the closest permutation (linear_sum_assignment);
  - matched_agreement: share of all samples on that permutation's diagonal;
  - purity_per_dimension: share of each dimension's samples on its majority digit;
  - dimension_digit_mi: mutual information (nats) between the dimension (uniform) and
    the evaluator's digit, at most log K = 2.303;
  - owning_dimensions / owned_digits: dimensions whose purity is at least
    `ownership_threshold`, and the distinct digits they own;
  - seen_agreement: share of the seen dimensions' samples given their own digit (dims
    of labeled digits are anchored: dimension k must generate digit k);
  - distinct_digits etc. from majority votes (digit_coverage).
  """
  confusion = np.asarray(confusion, np.float64)
  k = confusion.shape[0]
  perm = closest_permutation(confusion)
  rows = confusion.sum(1, keepdims=True)
  p_digit_given_dim = confusion / np.maximum(rows, 1)
  purity = p_digit_given_dim.max(1)
  joint = p_digit_given_dim / k
  marginal = joint.sum(0)
  with np.errstate(divide="ignore", invalid="ignore"):
    mi = np.nansum(joint * (np.log(p_digit_given_dim) - np.log(marginal)[None, :]))
  majority = majority_digits(confusion)
  owning = purity >= ownership_threshold
  seen = [d for d in seen_digits if d < k]
  return {
      "semantic_permutation": perm.tolist(),
      **digit_coverage(confusion.astype(np.int64)),
      "matched_agreement": float(confusion[np.arange(k), perm].sum() / confusion.sum()),
      "purity_per_dimension": purity.tolist(),
      "mean_purity": float(purity.mean()),
      "dimension_digit_mi": float(mi),
      "ownership_threshold": ownership_threshold,
      "owning_dimensions": int(owning.sum()),
      "owned_digits": int(len(np.unique(majority[owning]))),
      "seen_agreement": float(np.mean([p_digit_given_dim[d, d] for d in seen]))
                        if seen else float("nan"),
  }


def greedy_assignment(p: np.ndarray) -> np.ndarray:
  """The authors' assign_permutation (examples/DEMO_mnist4.py): rows -> columns of p [n, n].

  Each row requests its argmax column; a column requested by one row goes to it; for
  columns requested by several rows, the clashing rows are matched recursively to the
  columns nobody holds, and when every row clashes the best-scoring row of the first
  clashing column keeps it. As in the authors' code, that row may have asked for
  another column, and the result is then not a permutation (tests/protocols_test.py).
  """
  p = np.asarray(p)
  if p.ndim != 2 or p.shape[0] != p.shape[1]:
    raise ValueError(f"p of shape {p.shape}; expected a square matrix.")
  if p.shape[0] == 1:
    return np.array([0])
  labels = np.argmax(p, axis=1)
  # Columns in order of first request, as the authors' collections.Counter.
  counts = collections.Counter(labels.tolist())
  single = [c for c, n in counts.items() if n == 1]
  dups = [c for c, n in counts.items() if n > 1]
  if not dups:
    return labels
  rows = [i for i in range(p.shape[0]) if labels[i] in dups]
  cols = [j for j in range(p.shape[1]) if j not in single]
  if len(rows) == p.shape[0]:
    winner = int(np.argmax(p[:, dups[0]]))
    rows = [i for i in rows if i != winner]
    cols = [j for j in cols if j != dups[0]]
  sub = greedy_assignment(p[np.ix_(rows, cols)])
  labels[rows] = np.asarray(cols)[sub]
  return labels


def authors_images(graphdef: nnx.GraphDef, params, labeled_x: np.ndarray,
                   labeled_y: np.ndarray) -> np.ndarray:
  """One image per y dimension, as the authors' make_plots: [K, D] in {0, 1}.

  z = the mean over the labeled data of q(z|x,y)'s mean; image k is the decoder's
  mean for (e_k, z) thresholded at 0.5. labeled_x [N, D] floats, labeled_y [N, K].
  """
  model = nnx.merge(graphdef, params)
  z_bar = jnp.mean(model.encoder(jnp.asarray(labeled_x), jnp.asarray(labeled_y))[0], 0)
  k = model.num_classes
  probs = jax.nn.sigmoid(model.decoder(jnp.eye(k), jnp.broadcast_to(z_bar, (k, len(z_bar)))))
  return np.asarray(probs > 0.5, np.float32)


def authors_protocol(images: np.ndarray, evaluator_params, *, seen_digits
                     ) -> dict[str, Any]:
  """The authors' reading of one image per dimension: images [K, D] -> results.

  Dimensions of the seen digits keep their digit; the others are matched greedily
  (greedy_assignment) to the unseen digits by the evaluator's probabilities.
  authors_distinct_digits counts the distinct evaluator argmax digits of the images.
  """
  probs = np.asarray(jax.nn.softmax(evaluator_logits(evaluator_params, jnp.asarray(images))))
  k = probs.shape[0]
  seen = sorted(d for d in seen_digits if d < k)
  unseen = [d for d in range(k) if d not in seen]
  perm = np.arange(k)
  if unseen:
    perm[unseen] = np.asarray(unseen)[greedy_assignment(probs[np.ix_(unseen, unseen)])]
  predicted = np.argmax(probs, 1)
  return {"authors_permutation": perm.tolist(),
          "authors_evaluator_digits": predicted.tolist(),
          "authors_distinct_digits": int(len(np.unique(predicted)))}


def semantic_report(graphdef, params, evaluators: dict[str, Any], *, test_images: np.ndarray,
                    test_labels: np.ndarray, seen_digits, rng: jax.Array,
                    num_per_class: int, labeled_x: np.ndarray | None = None,
                    labeled_y: np.ndarray | None = None, ownership_threshold: float = 0.5
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Every semantic figure of one model; returns (results, arrays for samples.npz).

  `evaluators` maps a name to evaluator params, the first being the primary one whose
  results keep unprefixed keys (the others' keys are prefixed '<name>_'). test_images
  are binarised floats [N, D]; seen_digits are the labeled classes. With labeled_x
  [N, D] and labeled_y [N, K], the authors' protocol is also reported.
  """
  x, x_mean = generate(graphdef, params, rng, num_per_class=num_per_class)
  k, m, d = x.shape
  flat = x.reshape(k * m, d)
  own = model_predictions(graphdef, params, flat).reshape(k, m)
  predicted = model_predictions(graphdef, params, test_images)
  heldout = [c for c in range(NUM_DIGITS) if c not in set(seen_digits)]

  def accuracies(perm, prefix=""):
    return {f"{prefix}heldout_accuracy": permuted_accuracy(predicted, test_labels, perm,
                                                           digits=heldout)
                                          if heldout else float("nan"),
            f"{prefix}seen_accuracy": permuted_accuracy(predicted, test_labels, perm,
                                                        digits=seen_digits),
            f"{prefix}permuted_test_accuracy": permuted_accuracy(predicted, test_labels, perm)}

  # Which dimension the classifier gives each real test digit: [10 digits, K dims] counts,
  # where a digit that no dimension generates (a missing digit) goes instead.
  assignment = np.zeros((NUM_DIGITS, k), np.int64)
  np.add.at(assignment, (np.asarray(test_labels), predicted), 1)
  results: dict[str, Any] = {
      "test_digit_assignment": assignment.tolist(),
      "heldout_digits": heldout,
      "self_consistency": float(np.mean(own == np.arange(k)[:, None])),
      "self_consistency_per_dimension": np.mean(own == np.arange(k)[:, None], 1).tolist(),
  }
  arrays = {"x": x.reshape(k, m, d), "x_mean": x_mean, "model_digits": own}
  images = None
  if labeled_x is not None:
    images = authors_images(graphdef, params, labeled_x, labeled_y)
    arrays["authors_images"] = images
  for i, (name, evaluator_params) in enumerate(evaluators.items()):
    prefix = "" if i == 0 else f"{name}_"
    digits = np.asarray(jnp.argmax(evaluator_logits(evaluator_params, flat), -1)).reshape(k, m)
    confusion = confusion_matrix(digits)
    sem = confusion_semantics(confusion, seen_digits=seen_digits,
                              ownership_threshold=ownership_threshold)
    results.update({f"{prefix}confusion": confusion.tolist(),
                    **{f"{prefix}{key}": v for key, v in sem.items()},
                    **accuracies(np.asarray(sem["semantic_permutation"]), prefix)})
    arrays[f"{prefix}evaluator_digits"] = digits
    if images is not None:
      authors = authors_protocol(images, evaluator_params, seen_digits=seen_digits)
      results.update({f"{prefix}{key}": v for key, v in authors.items()})
      results.update(accuracies(np.asarray(authors["authors_permutation"]),
                                f"{prefix}authors_"))
  names = list(evaluators)
  if len(names) > 1:
    results["evaluators_disagree"] = any(
        results[f"{n}_distinct_digits"] != results["distinct_digits"] for n in names[1:])
  return results, arrays
