"""Semantic evaluation: what digit does each dimension of y generate?

Independent evaluators (evaluator.py) classify images generated from each y dimension
(generation.py); from the confusion of dimensions and digits come the closest permutation
from dimensions to digits, which maps the model's classes onto digits for held-out
accuracy, and the purity, ownership and mutual-information figures. semantic_report also
reads the authors' protocol (authors_protocol.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from untapped_jax.evaluate import authors_protocol as authors_protocol_lib
from untapped_jax.evaluate import evaluator
from untapped_jax.evaluate import generation
from untapped_jax.evaluate.evaluator import NUM_DIGITS


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


@dataclasses.dataclass(frozen=True)
class EvaluationData:
  """The real images a model's semantics are read against."""
  test_images: np.ndarray  # [N, D] binarised floats: held-out accuracy, digit assignment
  test_labels: np.ndarray  # int [N]
  seen_digits: tuple[int, ...]  # the labeled classes (the gate's and seen accuracy's)
  # [N_l, D] binarised and [N_l, K] one-hot: the labeled set, for the authors' protocol
  # (None: not reported).
  labeled_x: np.ndarray | None = None
  labeled_y: np.ndarray | None = None


def semantic_report(graphdef, params, evaluators: dict[str, Any], data: EvaluationData, *,
                    rng: jax.Array, num_per_class: int, ownership_threshold: float = 0.5
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Every semantic figure of one model; returns (results, arrays for samples.npz).

  `evaluators` maps a name to evaluator params, the first being the primary one whose
  results keep unprefixed keys (the others' keys are prefixed '<name>_'); num_per_class
  images are generated per dimension of y.
  """
  test_images, test_labels, seen_digits = data.test_images, data.test_labels, data.seen_digits
  labeled_x, labeled_y = data.labeled_x, data.labeled_y
  x, x_mean = generation.generate(graphdef, params, rng, num_per_class=num_per_class)
  k, m, d = x.shape
  flat = x.reshape(k * m, d)
  own = generation.model_predictions(graphdef, params, flat).reshape(k, m)
  predicted = generation.model_predictions(graphdef, params, test_images)
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
    images = authors_protocol_lib.authors_images(graphdef, params, labeled_x, labeled_y)
    arrays["authors_images"] = images
  for i, (name, evaluator_params) in enumerate(evaluators.items()):
    prefix = "" if i == 0 else f"{name}_"
    digits = np.asarray(jnp.argmax(evaluator.evaluator_logits(evaluator_params, flat), -1)).reshape(k, m)
    confusion = confusion_matrix(digits)
    sem = confusion_semantics(confusion, seen_digits=seen_digits,
                              ownership_threshold=ownership_threshold)
    results.update({f"{prefix}confusion": confusion.tolist(),
                    **{f"{prefix}{key}": v for key, v in sem.items()},
                    **accuracies(np.asarray(sem["semantic_permutation"]), prefix)})
    arrays[f"{prefix}evaluator_digits"] = digits
    if images is not None:
      authors = authors_protocol_lib.authors_protocol(images, evaluator_params, seen_digits=seen_digits)
      results.update({f"{prefix}{key}": v for key, v in authors.items()})
      results.update(accuracies(np.asarray(authors["authors_permutation"]),
                                f"{prefix}authors_"))
  names = list(evaluators)
  if len(names) > 1:
    results["evaluators_disagree"] = any(
        results[f"{n}_distinct_digits"] != results["distinct_digits"] for n in names[1:])
  return results, arrays
