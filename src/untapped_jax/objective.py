"""One step's loss from the three batches.

The full-data objective, per training image (N = N_labeled + N_unlabeled):

  J = (1/N) [ sum_labeled (L(x,y) + alpha log q(y|x)) + sum_unlabeled U(x)
              + lambda sum_label_only B(y) ]

with alpha = classification_weight * N / N_labeled (Kingma et al.'s 0.1 * N / N_l
per labeled example by default). Each sum is estimated by N_stream times its batch
mean, so the step's loss -J_hat is an unbiased estimate of -J.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp

from untapped_jax.bounds import m2

Batch = dict[str, dict[str, jax.Array]]
LossFn = Callable[[nnx.State, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class StreamWeights:
  """Per-example weights of each stream's batch mean in J_hat (see module doc)."""
  labeled: float
  unlabeled: float
  label_only: float
  classification: float  # alpha

  @classmethod
  def from_sizes(cls, *, num_labeled: int, num_unlabeled: int, num_label_only: int,
                 classification_weight: float, label_only_weight: float) -> "StreamWeights":
    if num_labeled < 1:
      raise ValueError(f"num_labeled={num_labeled}: M2 needs at least one labeled example.")
    total = num_labeled + num_unlabeled
    return cls(labeled=num_labeled / total, unlabeled=num_unlabeled / total,
               label_only=label_only_weight * num_label_only / total,
               classification=classification_weight * total / num_labeled)


def batch_terms(model, batch: Batch, rng: jax.Array, *, num_samples: int = 1
                ) -> dict[str, jax.Array]:
  """Per-example terms of each stream, vmapped: name -> [B_stream]."""
  rng_l, rng_u = jax.random.split(rng)
  xl, yl, xu = batch["labeled"]["x"], batch["labeled"]["y"], batch["unlabeled"]["x"]
  elbo = lambda x, y, key: m2.labeled_elbo(model, x, y, key, num_samples=num_samples)
  bound = lambda x, key: m2.unlabeled_bound(model, x, key, num_samples=num_samples)
  return {
      "labeled_elbo": jax.vmap(elbo)(xl, yl, jax.random.split(rng_l, len(xl))),
      "log_q_y": jax.vmap(lambda x, y: m2.classification_log_prob(model, x, y))(xl, yl),
      "unlabeled_bound": jax.vmap(bound)(xu, jax.random.split(rng_u, len(xu))),
  }


def make_loss_fn(graphdef: nnx.GraphDef, weights: StreamWeights, *,
                 num_samples: int = 1) -> LossFn:
  """loss_fn(params, batch, rng) -> (loss [], metrics); batch holds binarised x."""

  def loss_fn(params, batch, rng):
    model = nnx.merge(graphdef, params)
    terms = batch_terms(model, batch, rng, num_samples=num_samples)
    objective = (weights.labeled * jnp.mean(terms["labeled_elbo"]
                                            + weights.classification * terms["log_q_y"])
                 + weights.unlabeled * jnp.mean(terms["unlabeled_bound"]))
    metrics = {name: jnp.mean(v) for name, v in terms.items()}
    metrics["objective"] = objective
    return -objective, metrics

  return loss_fn
