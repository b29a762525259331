"""The label-only bound, an importance-sampling estimate of log q(y), and their gap.

Both depend on y only through its class, so they are computed once per class
with many draws and averaged with the test set's class frequencies.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from untapped_jax.bounds import untapped
from untapped_jax.evaluate import generation


def label_only_bound_and_log_q_y(model, y: jax.Array, rng: jax.Array, *,
                                 log_prior_x: untapped.LogPriorX, num_samples: int
                                 ) -> tuple[jax.Array, jax.Array]:
  """(bound, IS estimate of log q(y)) for one label y [K], exact Bernoulli x.

  The estimate log (1/S) sum_s w_s uses p(z)p(x|y,z) as the proposal; it is itself a
  lower bound on log q(y) in expectation, tightening as S grows (Burda et al. 2016).
  """
  log_w = untapped.label_only_log_weights(model, y, rng, log_prior_x=log_prior_x,
                                          estimator="exact", num_samples=num_samples)
  return jnp.mean(log_w), jax.nn.logsumexp(log_w) - jnp.log(num_samples)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_samples"))
def _label_only_log_terms(graphdef, params, settings, y, key, *, num_samples):
  """The exact-estimator log terms of one label's bound; compiled once per graph, the
  settings' static choices and sample count, with the parameters and the settings'
  arrays (q(x)'s pixel probabilities or a pretrained prior's parameters) as arguments."""
  return untapped.label_only_log_terms(
      nnx.merge(graphdef, params), y, key, log_prior_x=settings.log_prior_x(graphdef, params),
      estimator="exact", num_samples=num_samples)


def label_only_report(graphdef: nnx.GraphDef, params, settings, *, test_labels: np.ndarray,
                      rng: jax.Array, num_samples: int, chunk: int = 500) -> dict[str, float]:
  """Per-class and test-weighted label-only bound, IS log q(y) and gap, in nats.

  `settings` is an objective.LabelOnlySettings (it picks q(x)).
  """
  k = nnx.merge(graphdef, params).num_classes
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples}: expected a positive integer.")
  chunk = min(chunk, num_samples)
  log_terms = lambda y, key: _label_only_log_terms(graphdef, params, settings, y, key,
                                                    num_samples=chunk)

  per_class_bound, per_class_log_q, per_class_terms = [], [], []
  for c in range(k):
    y = jnp.eye(k)[c]
    keys = jax.random.split(jax.random.fold_in(rng, c), -(-num_samples // chunk))
    chunks = [log_terms(y, key) for key in keys]
    terms = {name: jnp.concatenate([t[name] for t in chunks])[:num_samples]
             for name in chunks[0]}
    log_w = untapped.log_weights_from_terms(terms)
    per_class_bound.append(float(jnp.mean(log_w)))
    per_class_log_q.append(float(jax.nn.logsumexp(log_w) - jnp.log(len(log_w))))
    per_class_terms.append({name: float(jnp.mean(v)) for name, v in terms.items()})
  freq = np.bincount(test_labels, minlength=k) / len(test_labels)
  bound, log_q = float(freq @ per_class_bound), float(freq @ per_class_log_q)
  direct, direct_se = direct_log_q_y(graphdef, params, settings, rng=jax.random.fold_in(rng, k),
                                     num_samples=num_samples, chunk=chunk)
  return {"test_label_only_bound": bound, "test_log_q_y_is": log_q,
          "label_only_gap": log_q - bound,
          # log q(y) = log E_{x~q(x)} q(y|x) by sampling q(x) itself: unbiased in q(y),
          # unlike the IS estimate, which is a stochastic lower bound when the gap is large.
          "test_log_q_y_direct": float(freq @ direct),
          "log_q_y_direct_per_class": direct.tolist(),
          "log_q_y_direct_se_per_class": direct_se.tolist(),
          "label_only_bound_per_class": per_class_bound,
          "log_q_y_is_per_class": per_class_log_q,
          # Mean of each log-density in the bound, per class: where the nats go.
          "label_only_terms_per_class": per_class_terms}


def sample_image_prior(graphdef: nnx.GraphDef, params, settings, rng: jax.Array,
                       num_samples: int) -> jax.Array:
  """x ~ q(x) [S, D]: uniform or pixel-wise Bernoulli draws, or, for the 'model' and
  'pretrained' priors, ancestral draws y ~ p(y), z ~ p(z), x ~ p(x|y,z) of that model
  (the normalised density that its bound U(x) approximates)."""
  model = nnx.merge(graphdef, params)
  d = model.num_pixels
  if settings.image_prior == "uniform":
    probs = jnp.full((num_samples, d), 0.5)
  elif settings.image_prior == "pixel_bernoulli":
    probs = jnp.broadcast_to(jnp.asarray(settings.pixel_probs), (num_samples, d))
  else:
    if settings.image_prior == "pretrained":
      model = nnx.merge(settings.prior_graphdef, settings.prior_params)
    k = model.num_classes
    y_key, z_key, rng = jax.random.split(rng, 3)
    y = jax.nn.one_hot(jax.random.randint(y_key, (num_samples,), 0, k), k)
    z = jax.random.normal(z_key, (num_samples, model.latent_dim))
    probs = jax.nn.sigmoid(model.decoder(y, z))
  return jax.random.bernoulli(rng, probs).astype(jnp.float32)


def direct_log_q_y(graphdef: nnx.GraphDef, params, settings, *, rng: jax.Array,
                   num_samples: int, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
  """log q(y) = log (1/S) sum_s q(y|x_s), x_s ~ q(x), for every class: ([K], [K] SE).

  The standard error is the delta method's: SE of the mean of q(y|x_s) over that mean.
  """
  chunks = []
  for i in range(-(-num_samples // chunk)):
    x = sample_image_prior(graphdef, params, settings, jax.random.fold_in(rng, i), chunk)
    chunks.append(np.asarray(jax.nn.softmax(generation.classifier_logits(graphdef, params, x)),
                             np.float64))
  q = np.concatenate(chunks)[:num_samples]  # [S, K]
  mean = q.mean(0)
  se = q.std(0, ddof=1) / np.sqrt(len(q)) if len(q) > 1 else np.full_like(mean, np.nan)
  with np.errstate(divide="ignore"):
    return np.log(mean), se / mean
