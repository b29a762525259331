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

import functools
from typing import Any, Callable

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from untapped_jax import saved_state
from untapped_jax import rng as rng_lib
from untapped_jax.bounds import m2
from untapped_jax.bounds import untapped

Batch = dict[str, dict[str, jax.Array]]
LossFn = Callable[[nnx.State, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
MODEL_NAMES = ("m2", "untapped")


@struct.dataclass
class StreamWeights:
  """Per-example weights of each stream's batch mean in J_hat (see module doc).

  A pytree: a population stacks one per replica and vmaps over them.
  """
  labeled: float
  unlabeled: float
  label_only: float
  classification: float  # alpha

  @classmethod
  def from_batch_means(cls, *, labeled: float, unlabeled: float, classification: float,
                       label_only: float) -> "StreamWeights":
    """Plain coefficients of each stream's batch mean (the authors' weighting):

      J_hat = labeled mean(L) + classification mean(log q(y|x)) + unlabeled mean(U)
              + label_only mean(B).
    """
    if labeled <= 0:
      raise ValueError(f"objective.labeled_weight={labeled}: expected > 0 with "
                       "stream_weighting='batch_mean'.")
    return cls(labeled=labeled, unlabeled=unlabeled, label_only=label_only,
               classification=classification / labeled)

  @classmethod
  def from_sizes(cls, *, num_labeled: int, num_unlabeled: int, num_label_only: int,
                 classification_weight: float, label_only_weight: float) -> "StreamWeights":
    if num_labeled < 1:
      raise ValueError(f"num_labeled={num_labeled}: M2 needs at least one labeled example.")
    total = num_labeled + num_unlabeled
    return cls(labeled=num_labeled / total, unlabeled=num_unlabeled / total,
               label_only=label_only_weight * num_label_only / total,
               classification=classification_weight * total / num_labeled)


@struct.dataclass
class LabelOnlySettings:
  """How the label-only term is computed (config.objective's label-only keys).

  The code paths (which objective, estimator, q(x), how many samples) are static fields:
  part of the pytree's structure, hashable, shared by every replica of a population and
  fixed in the compiled step. The rest are numbers, pytree leaves that a population
  stacks per replica and the step receives as (traced) arrays. `check` validates the
  settings; from_config calls it, so a config is validated once, at start-up.
  """
  objective: str = struct.field(pytree_node=False, default="bound")
  estimator: str = struct.field(pytree_node=False, default="straight_through")
  num_samples: int = struct.field(pytree_node=False, default=1)
  image_prior: str = struct.field(pytree_node=False, default="pixel_bernoulli")
  prior_stop_gradient: bool = struct.field(pytree_node=False, default=True)
  sleep_terms: tuple[str, ...] = struct.field(pytree_node=False, default=())
  # image_prior='pretrained': the fixed model whose U(x) is log q(x) (pretrained_image_prior).
  prior_graphdef: nnx.GraphDef | None = struct.field(pytree_node=False, default=None)
  temperature: float | jax.Array = 0.5  # of the relaxed x estimators
  label_smoothing: float | jax.Array = 1.0
  pixel_probs: np.ndarray | None = None  # [D]: image_prior='pixel_bernoulli'
  # [K, num_samples, Z]: fixed z draws per class (objective.label_only_z='fixed').
  fixed_z: np.ndarray | None = None
  prior_params: Any = None  # image_prior='pretrained'

  def check(self) -> "LabelOnlySettings":
    """self, or a ValueError naming the bad setting (concrete values only)."""
    if self.objective not in untapped.LABEL_ONLY_OBJECTIVES:
      raise ValueError(f"objective.label_only={self.objective!r}; "
                       f"expected one of {untapped.LABEL_ONLY_OBJECTIVES}.")
    if self.estimator not in untapped.ESTIMATORS:
      raise ValueError(f"objective.x_estimator={self.estimator!r}; "
                       f"expected one of {untapped.ESTIMATORS}.")
    if self.image_prior not in untapped.IMAGE_PRIORS:
      raise ValueError(f"objective.image_prior={self.image_prior!r}; "
                       f"expected one of {untapped.IMAGE_PRIORS}.")
    if self.image_prior == "pixel_bernoulli" and self.pixel_probs is None:
      raise ValueError("image_prior='pixel_bernoulli' needs pixel_probs fitted to images.")
    if self.image_prior == "pretrained" and (self.prior_graphdef is None
                                             or self.prior_params is None):
      raise ValueError("image_prior='pretrained' needs the prior model's graphdef and "
                       "params (objective.image_prior_workdir).")
    if not 0.0 < self.label_smoothing <= 1.0:
      raise ValueError(f"objective.label_smoothing={self.label_smoothing}; expected (0, 1].")
    untapped.check_sleep_terms(self.sleep_terms)
    if self.num_samples < 1:
      raise ValueError(f"objective.label_only_num_samples={self.num_samples}; expected >= 1.")
    return self

  @classmethod
  def from_config(cls, objective_config, *, pixel_probs=None, fixed_z=None
                  ) -> "LabelOnlySettings":
    """The checked settings of config.objective."""
    o = objective_config
    prior_graphdef = prior_params = None
    if o.image_prior == "pretrained":
      prior_graphdef, prior_params = pretrained_image_prior(o.image_prior_workdir)
    return cls(objective=o.label_only, estimator=o.x_estimator,
               temperature=o.relaxed_temperature, num_samples=o.label_only_num_samples,
               label_smoothing=o.label_smoothing, image_prior=o.image_prior,
               prior_stop_gradient=o.image_prior_stop_gradient,
               sleep_terms=tuple(o.sleep_terms), pixel_probs=pixel_probs, fixed_z=fixed_z,
               prior_graphdef=prior_graphdef, prior_params=prior_params).check()

  def log_prior_x(self, graphdef, params) -> untapped.LogPriorX:
    if self.image_prior == "uniform":
      return untapped.uniform_log_prior
    if self.image_prior == "pixel_bernoulli":
      return untapped.pixel_bernoulli_log_prior(jnp.asarray(self.pixel_probs))
    if self.image_prior == "pretrained":  # held fixed, whatever prior_stop_gradient says
      return untapped.model_log_prior(
          nnx.merge(self.prior_graphdef, jax.lax.stop_gradient(self.prior_params)))
    if self.prior_stop_gradient:
      params = jax.lax.stop_gradient(params)
    return untapped.model_log_prior(nnx.merge(graphdef, params))


@functools.lru_cache(maxsize=4)
def pretrained_image_prior(workdir: str) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params) of the finished run in `workdir`, for image_prior='pretrained';
  loaded once per process, parameters as host arrays."""
  if not workdir:
    raise ValueError("objective.image_prior='pretrained' needs objective.image_prior_workdir: "
                     "the workdir of a finished untapped-train run (its U(x) is log q(x)).")
  try:
    graphdef, params, _ = saved_state.load_run_params(workdir)
  except ValueError as e:
    raise ValueError(f"objective.image_prior_workdir: {e}") from None
  return graphdef, jax.tree.map(lambda a: np.asarray(a, np.float32), jax.device_get(params))


def batch_terms(model, batch: Batch, rng: jax.Array, *, num_samples: int = 1
                ) -> dict[str, jax.Array]:
  """Per-example M2 terms of the labeled and unlabeled streams, vmapped: name -> [B].

  Also 'unlabeled_elbos' and 'unlabeled_log_q' [B, K], which the batch-level
  label-only objectives reuse (they are not metrics).
  """
  rng_l, rng_u = jax.random.split(rng)
  xl, yl, xu = batch["labeled"]["x"], batch["labeled"]["y"], batch["unlabeled"]["x"]
  elbo = lambda x, y, key: m2.labeled_elbo(model, x, y, key, num_samples=num_samples)
  unlabeled = jax.vmap(lambda x, key: m2.unlabeled_bound_terms(
      model, x, key, num_samples=num_samples))(xu, jax.random.split(rng_u, len(xu)))
  return {
      "labeled_elbo": jax.vmap(elbo)(xl, yl, jax.random.split(rng_l, len(xl))),
      "log_q_y": jax.vmap(lambda x, y: m2.classification_log_prob(model, x, y))(xl, yl),
      "unlabeled_bound": unlabeled["bound"],
      "unlabeled_elbos": unlabeled["elbos"],
      "unlabeled_log_q": unlabeled["log_q"],
  }


def label_only_terms(model, y: jax.Array, rng: jax.Array, *, settings: LabelOnlySettings,
                     log_prior_x: untapped.LogPriorX,
                     unlabeled_terms: dict[str, jax.Array] | None = None) -> jax.Array:
  """The label-only objective's value for each label of the batch: y [B, K] -> [B].

  `unlabeled_terms` (batch_terms' output) feeds the batch-level objectives
  'class_balance' and 'batch_posterior', whose q(x) is the unlabeled batch.
  """
  name, s = settings.objective, settings
  targets = untapped.smooth_labels(y, s.label_smoothing)
  if name == "class_balance":
    return untapped.class_balance_bound(unlabeled_terms["unlabeled_log_q"], targets)
  if name == "batch_posterior":
    return untapped.batch_posterior_bound(unlabeled_terms["unlabeled_log_q"],
                                          unlabeled_terms["unlabeled_elbos"], targets)
  keys = jax.random.split(rng, len(y))
  if name == "consistency":
    def draws(label, key, z):  # -> (f, log p(x|y,z)), each [S]; vmap passes z=None on
      return jax.vmap(lambda k, zz: untapped.consistency_draw(model, label, k, z=zz))(
          jax.random.split(key, s.num_samples), z)
    f, log_p_x = _vmap_over_labels(draws, y, keys, s)  # [B, S]
    surrogate = untapped.consistency_surrogate(f.reshape(-1), log_p_x.reshape(-1))
    return surrogate.reshape(f.shape).mean(-1)
  if name == "sleep":
    fn = lambda label, key, z: untapped.sleep_objective(
        model, label, key, log_prior_x=log_prior_x, extra_terms=s.sleep_terms,
        num_samples=s.num_samples, label_smoothing=s.label_smoothing, z=z)
  else:
    fn = lambda label, key, z: untapped.label_only_bound(
        model, label, key, log_prior_x=log_prior_x, estimator=s.estimator,
        temperature=s.temperature, num_samples=s.num_samples,
        label_smoothing=s.label_smoothing, z=z)
  return _vmap_over_labels(fn, y, keys, s)


def _vmap_over_labels(fn, y: jax.Array, keys: jax.Array, settings: LabelOnlySettings):
  """vmap fn(label [K], key, z [S, Z] | None) over the batch, z fixed per class or None.

  With z=None (an empty pytree, which vmap passes through) the per-draw functions
  sample z ~ p(z) themselves.
  """
  fixed = (None if settings.fixed_z is None
           else jnp.asarray(settings.fixed_z)[jnp.argmax(y, -1)])  # [B, S, Z]
  return jax.vmap(fn)(y, keys, fixed)


def make_loss_fn(graphdef: nnx.GraphDef, weights: StreamWeights, *, num_samples: int = 1,
                 label_only: LabelOnlySettings | None = None,
                 classification_temperature: float | jax.Array | None = None) -> LossFn:
  """loss_fn(params, batch, rng) -> (loss [], metrics); batch holds binarised x.

  Which terms are computed is decided here, in Python, never on (possibly traced)
  numbers: the label-only stream only with `label_only` settings (None skips it, not
  multiplies it by zero, so Untapped with lambda = 0 computes exactly M2's loss), and
  the labels are scored against a Concrete sample of q(y|x) at
  `classification_temperature` (the authors' classification loss) only when one is given.
  """
  use_label_only = label_only is not None
  concrete = classification_temperature is not None

  def loss_fn(params, batch, rng):
    model = nnx.merge(graphdef, params)
    m2_rng, label_only_rng = jax.random.split(rng)
    terms = batch_terms(model, batch, m2_rng, num_samples=num_samples)
    if concrete:
      terms["log_q_y"] = concrete_log_prob(model, batch["labeled"]["x"],
                                           batch["labeled"]["y"], jax.random.fold_in(rng, 7),
                                           temperature=classification_temperature)
    objective = (weights.labeled * jnp.mean(terms["labeled_elbo"]
                                            + weights.classification * terms["log_q_y"])
                 + weights.unlabeled * jnp.mean(terms["unlabeled_bound"]))
    if use_label_only:
      terms["label_only_estimate"] = label_only_terms(
          model, batch["label_only"]["y"], label_only_rng, settings=label_only,
          log_prior_x=label_only.log_prior_x(graphdef, params), unlabeled_terms=terms)
      objective += weights.label_only * jnp.mean(terms["label_only_estimate"])
    metrics = {name: jnp.mean(v) for name, v in terms.items()
               if name not in ("unlabeled_elbos", "unlabeled_log_q")}
    metrics["objective"] = objective
    return -objective, metrics

  return loss_fn


def concrete_log_prob(model, x: jax.Array, y: jax.Array, rng: jax.Array, *,
                      temperature: float) -> jax.Array:
  """sum_k y_k log s_k with s ~ Concrete(q(y|x), temperature): x [B, D], y [B, K] -> [B]."""
  logits = jax.nn.log_softmax(model.classifier(x))
  gumbel = jax.random.gumbel(rng, logits.shape, logits.dtype)
  return jnp.sum(y * jax.nn.log_softmax((logits + gumbel) / temperature), -1)


# ----------------------------------------------------------------------------- from a config


STREAM_WEIGHTINGS = ("dataset", "batch_mean")
LABEL_ONLY_Z = ("prior", "fixed")


def stream_weights(config, *, num_labeled: int, num_unlabeled: int, num_label_only: int
                   ) -> StreamWeights:
  """The coefficients of the streams' batch means for config.objective.stream_weighting."""
  o = config.objective
  label_only_weight = o.label_only_weight if config.model_name == "untapped" else 0.0
  if o.stream_weighting == "dataset":
    return StreamWeights.from_sizes(
        num_labeled=num_labeled, num_unlabeled=num_unlabeled, num_label_only=num_label_only,
        classification_weight=o.classification_weight, label_only_weight=label_only_weight)
  if o.stream_weighting == "batch_mean":
    return StreamWeights.from_batch_means(
        labeled=o.labeled_weight, unlabeled=o.unlabeled_weight,
        classification=o.classification_weight, label_only=label_only_weight)
  raise ValueError(f"objective.stream_weighting={o.stream_weighting!r}; "
                   f"expected one of {STREAM_WEIGHTINGS}.")


def fixed_label_only_z(config, *, seed: int) -> np.ndarray | None:
  """objective.label_only_z='fixed': z [K, S, Z] drawn once from p(z) with `seed`."""
  mode = config.objective.label_only_z
  if mode not in LABEL_ONLY_Z:
    raise ValueError(f"objective.label_only_z={mode!r}; expected one of {LABEL_ONLY_Z}.")
  if mode == "prior":
    return None
  shape = (config.model.num_classes, config.objective.label_only_num_samples,
           config.model.latent_dim)
  return np.asarray(jax.random.normal(rng_lib.key(seed, rng_lib.Stream.LABEL_ONLY_Z), shape))


def uses_label_only(config) -> bool:
  return config.model_name == "untapped" and config.objective.label_only_weight != 0


def uses_concrete_classification(config) -> bool:
  return config.objective.classification_temperature > 0


@struct.dataclass
class LossNumbers:
  """A replica's loss hyperparameters: a pytree of float32 arrays that a population
  stacks per replica (train_state.stack) and its step vmaps over; the code paths they
  feed are in the static fields of `label_only` and in the config."""
  weights: StreamWeights
  classification_temperature: np.ndarray  # [], used where uses_concrete_classification
  label_only: LabelOnlySettings | None  # None where not uses_label_only: the term is skipped


def loss_numbers(config, *, num_labeled: int, num_unlabeled: int, num_label_only: int,
                 pixel_probs: np.ndarray | None) -> LossNumbers:
  """The numbers of a replica's loss (see LossNumbers), checked with concrete values
  before anything is traced; loss_fn_from_numbers turns them into the loss."""
  name = config.model_name
  if name not in MODEL_NAMES:
    raise ValueError(f"model_name={name!r}; expected one of {MODEL_NAMES}.")
  o = config.objective
  weights = stream_weights(config, num_labeled=num_labeled, num_unlabeled=num_unlabeled,
                           num_label_only=num_label_only)
  f32 = lambda v: None if v is None else np.asarray(v, np.float32)
  label_only = None
  if uses_label_only(config):
    settings = LabelOnlySettings.from_config(
        o, pixel_probs=pixel_probs, fixed_z=fixed_label_only_z(config, seed=config.seed))
    if o.image_prior == "pretrained":
      prior_pixels = nnx.merge(settings.prior_graphdef, settings.prior_params).num_pixels
      if prior_pixels != config.model.num_pixels:
        raise ValueError(f"objective.image_prior_workdir={o.image_prior_workdir!r}: its model "
                         f"has {prior_pixels} pixels; expected model.num_pixels="
                         f"{config.model.num_pixels}.")
    # The pretrained prior's parameters too: an argument of the step, not a constant
    # baked into the compiled program.
    label_only = jax.tree.map(f32, settings)
  return LossNumbers(weights=jax.tree.map(f32, weights),
                     classification_temperature=f32(o.classification_temperature),
                     label_only=label_only)


def loss_fn_from_numbers(config, graphdef, numbers: LossNumbers) -> LossFn:
  """The loss of `config.model_name` with the (possibly traced) `numbers`; which terms
  it computes comes from `config` (uses_label_only, uses_concrete_classification) and
  is shared by a population."""
  temperature = (numbers.classification_temperature if uses_concrete_classification(config)
                 else None)
  return make_loss_fn(graphdef, numbers.weights, num_samples=config.objective.num_samples,
                      label_only=numbers.label_only, classification_temperature=temperature)


def numbers_for_splits(config, splits) -> LossNumbers:
  """loss_numbers for the data splits of one replica (q(x) fitted to its training images)."""
  return loss_numbers(config, num_labeled=len(splits.labeled),
                      num_unlabeled=len(splits.unlabeled),
                      num_label_only=len(splits.label_only),
                      pixel_probs=untapped.fit_pixel_bernoulli(splits.train_images))
