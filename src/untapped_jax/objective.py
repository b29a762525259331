"""One step's loss from the three batches, for M2 and Untapped through one code path.

The full-data objective, per training image (N = N_labeled + N_unlabeled):

  J = (1/N) [ sum_labeled (L(x,y) + alpha log q(y|x)) + sum_unlabeled U(x)
              + lambda sum_label_only B(y) ]

with alpha = classification_weight * N / N_labeled (Kingma et al.'s 0.1 * N / N_l
per labeled example by default) and B the inverted bound of bounds/untapped.py
(lambda = 0 for M2). Each sum is estimated by N_stream times its batch mean, so the
step's loss -J_hat is an unbiased estimate of -J.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from untapped_jax.bounds import m2
from untapped_jax.bounds import untapped

Batch = dict[str, dict[str, jax.Array]]
LossFn = Callable[[nnx.State, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
MODEL_NAMES = ("m2", "untapped")


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


@dataclasses.dataclass(frozen=True)
class LabelOnlySettings:
  """How the label-only bound is estimated (config.objective's label-only keys)."""
  estimator: str = "straight_through"
  temperature: float = 0.5
  num_samples: int = 1
  label_smoothing: float = 1.0
  image_prior: str = "pixel_bernoulli"
  prior_stop_gradient: bool = True
  pixel_probs: np.ndarray | None = dataclasses.field(default=None, compare=False)

  def __post_init__(self):
    if self.estimator not in untapped.ESTIMATORS:
      raise ValueError(f"objective.x_estimator={self.estimator!r}; "
                       f"expected one of {untapped.ESTIMATORS}.")
    if self.image_prior not in untapped.IMAGE_PRIORS:
      raise ValueError(f"objective.image_prior={self.image_prior!r}; "
                       f"expected one of {untapped.IMAGE_PRIORS}.")
    if self.image_prior == "pixel_bernoulli" and self.pixel_probs is None:
      raise ValueError("image_prior='pixel_bernoulli' needs pixel_probs fitted to images.")
    if not 0.0 < self.label_smoothing <= 1.0:
      raise ValueError(f"objective.label_smoothing={self.label_smoothing}; expected (0, 1].")

  @classmethod
  def from_config(cls, objective_config, *, pixel_probs=None) -> "LabelOnlySettings":
    o = objective_config
    return cls(estimator=o.x_estimator, temperature=o.relaxed_temperature,
               num_samples=o.label_only_num_samples, label_smoothing=o.label_smoothing,
               image_prior=o.image_prior, prior_stop_gradient=o.image_prior_stop_gradient,
               pixel_probs=pixel_probs)

  def log_prior_x(self, graphdef, params) -> untapped.LogPriorX:
    if self.image_prior == "uniform":
      return untapped.uniform_log_prior
    if self.image_prior == "pixel_bernoulli":
      return untapped.pixel_bernoulli_log_prior(jnp.asarray(self.pixel_probs))
    if self.prior_stop_gradient:
      params = jax.lax.stop_gradient(params)
    return untapped.model_log_prior(nnx.merge(graphdef, params))


def batch_terms(model, batch: Batch, rng: jax.Array, *, num_samples: int = 1
                ) -> dict[str, jax.Array]:
  """Per-example M2 terms of the labeled and unlabeled streams, vmapped: name -> [B]."""
  rng_l, rng_u = jax.random.split(rng)
  xl, yl, xu = batch["labeled"]["x"], batch["labeled"]["y"], batch["unlabeled"]["x"]
  elbo = lambda x, y, key: m2.labeled_elbo(model, x, y, key, num_samples=num_samples)
  bound = lambda x, key: m2.unlabeled_bound(model, x, key, num_samples=num_samples)
  return {
      "labeled_elbo": jax.vmap(elbo)(xl, yl, jax.random.split(rng_l, len(xl))),
      "log_q_y": jax.vmap(lambda x, y: m2.classification_log_prob(model, x, y))(xl, yl),
      "unlabeled_bound": jax.vmap(bound)(xu, jax.random.split(rng_u, len(xu))),
  }


def label_only_terms(model, y: jax.Array, rng: jax.Array, *, settings: LabelOnlySettings,
                     log_prior_x: untapped.LogPriorX) -> jax.Array:
  """The label-only bound's estimate for each label of the batch: y [B, K] -> [B]."""
  bound = lambda label, key: untapped.label_only_bound(
      model, label, key, log_prior_x=log_prior_x, estimator=settings.estimator,
      temperature=settings.temperature, num_samples=settings.num_samples,
      label_smoothing=settings.label_smoothing)
  return jax.vmap(bound)(y, jax.random.split(rng, len(y)))


def make_loss_fn(graphdef: nnx.GraphDef, weights: StreamWeights, *, num_samples: int = 1,
                 label_only: LabelOnlySettings | None = None) -> LossFn:
  """loss_fn(params, batch, rng) -> (loss [], metrics); batch holds binarised x.

  The label-only stream is skipped (not multiplied by zero) when its weight is 0 or
  `label_only` is None, so Untapped with lambda = 0 computes exactly M2's loss.
  """
  use_label_only = label_only is not None and weights.label_only != 0.0

  def loss_fn(params, batch, rng):
    model = nnx.merge(graphdef, params)
    m2_rng, label_only_rng = jax.random.split(rng)
    terms = batch_terms(model, batch, m2_rng, num_samples=num_samples)
    objective = (weights.labeled * jnp.mean(terms["labeled_elbo"]
                                            + weights.classification * terms["log_q_y"])
                 + weights.unlabeled * jnp.mean(terms["unlabeled_bound"]))
    if use_label_only:
      terms["label_only_estimate"] = label_only_terms(
          model, batch["label_only"]["y"], label_only_rng, settings=label_only,
          log_prior_x=label_only.log_prior_x(graphdef, params))
      objective += weights.label_only * jnp.mean(terms["label_only_estimate"])
    metrics = {name: jnp.mean(v) for name, v in terms.items()}
    metrics["objective"] = objective
    return -objective, metrics

  return loss_fn

