"""Untapped's inverted bound on label-only data y, per example.

For a label y with no image, q(x)q(y|x)q(z|x,y) is read as a generative model
and p(z)p(x|y,z) as its approximate posterior:

  log q(y) >= E_{z~p(z), x~p(x|y,z)} [ log q(x) + log q(y|x) + log q(z|x,y)
                                       - log p(z) - log p(x|y,z) ],

tight when p(z)p(x|y,z) = q(x,z|y). Shapes are for ONE example: y [K]; x [D].

x is Bernoulli, so the gradient needs an estimator (`estimator`):
  'mean'             x = sigmoid(logits), the decoder's probabilities;
  'relaxed'          x ~ RelaxedBernoulli(logits, temperature) (Concrete);
  'straight_through' x = hard sample forward, sigmoid(logits)'s gradient backward;
  'exact'            x = hard sample, no gradient through x. Reported bounds use this.
                     The decoder's only gradient is then that of -log p(x|y,z) at the
                     stopped sample, which has zero mean (score-function identity): in
                     expectation the term trains q(y|x) and q(z|x,y) alone.
The forward value of 'straight_through' and 'exact' is the bound itself; 'mean' and
'relaxed' evaluate the integrand at relaxed x, which is not a bound.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from untapped_jax.bounds import m2
from untapped_jax.models import M2

ESTIMATORS = ("mean", "relaxed", "straight_through", "exact")
IMAGE_PRIORS = ("uniform", "pixel_bernoulli", "model", "pretrained")
# log q(x) of an image x [D] in [0, 1], with a key for priors that sample.
LogPriorX = Callable[[jax.Array, jax.Array], jax.Array]


def gaussian_log_prob(z: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """log N(z; mean, diag(exp(log_var))): [Z] x3 -> []."""
  return -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + log_var
                        + jnp.square(z - mean) * jnp.exp(-log_var))


def sample_x(logits: jax.Array, rng: jax.Array, *, estimator: str,
             temperature: float = 0.5) -> jax.Array:
  """An image drawn from Bernoulli(sigmoid(logits)) [D], differentiable per `estimator`."""
  probs = jax.nn.sigmoid(logits)
  if estimator == "mean":
    return probs
  if estimator == "relaxed":
    u = jax.random.uniform(rng, logits.shape, minval=1e-6, maxval=1 - 1e-6)
    return jax.nn.sigmoid((logits + jnp.log(u) - jnp.log1p(-u)) / temperature)
  if estimator not in ("straight_through", "exact"):
    raise ValueError(f"estimator={estimator!r}; expected one of {ESTIMATORS}.")
  hard = jax.random.bernoulli(rng, probs).astype(logits.dtype)
  if estimator == "straight_through":
    # The bracket is exactly 0 forward, so the value is the binary sample itself.
    return hard + (probs - jax.lax.stop_gradient(probs))
  return jax.lax.stop_gradient(hard)


def smooth_labels(y: jax.Array, smoothing: float) -> jax.Array:
  """Puts `smoothing` of the mass on y's class, the rest evenly on the others: [K] -> [K]."""
  if not isinstance(smoothing, jax.core.Tracer) and smoothing >= 1.0:
    return y  # exactly y; the formula below gives y too, up to rounding
  k = y.shape[-1]
  return y * smoothing + (1.0 - y) * (1.0 - smoothing) / (k - 1)


def label_only_log_terms(model: M2, y: jax.Array, rng: jax.Array, *,
                         log_prior_x: LogPriorX, estimator: str = "straight_through",
                         temperature: float = 0.5, num_samples: int = 1,
                         label_smoothing: float = 1.0, z: jax.Array | None = None
                         ) -> dict[str, jax.Array]:
  """The integrand's five log-densities at `num_samples` draws (z, x) ~ p(z)p(x|y,z).

  y [K] -> {'log_q_x', 'log_q_y_given_x', 'log_q_z', 'log_p_z', 'log_p_x'}, each [S].
  `label_smoothing` < 1 softens the target of the log q(y|x) term only; the decoder
  is always conditioned on y itself. A smoothed target makes the term
  sum_k t_k log q(k|x), which is not log q(y|x) of any label, so the result is then
  no longer a bound on log q(y). `z` [S, Z], when given, replaces the draws from
  p(z) (the authors' fixed z per label); the term is then no longer an expectation
  under p(z).
  """
  target = smooth_labels(y, label_smoothing)
  if z is not None and z.shape != (num_samples, model.latent_dim):
    raise ValueError(f"z of shape {z.shape}; expected [num_samples={num_samples}, "
                     f"latent_dim={model.latent_dim}].")

  def one_draw(key, z):
    z_key, x_key, prior_key = jax.random.split(key, 3)
    if z is None:
      z = jax.random.normal(z_key, (model.latent_dim,))
    logits = model.decoder(y, z)
    x = sample_x(logits, x_key, estimator=estimator, temperature=temperature)
    mean, log_var = model.encoder(x, y)
    return {"log_q_x": log_prior_x(x, prior_key),
            "log_q_y_given_x": jnp.sum(target * jax.nn.log_softmax(model.classifier(x))),
            "log_q_z": gaussian_log_prob(z, mean, log_var),
            "log_p_z": gaussian_log_prob(z, jnp.zeros_like(z), jnp.zeros_like(z)),
            "log_p_x": m2.bernoulli_log_prob(x, logits)}

  keys = jax.random.split(rng, num_samples)
  if z is None:
    return jax.vmap(lambda key: one_draw(key, None))(keys)
  return jax.vmap(one_draw)(keys, z)


def log_weights_from_terms(terms: dict[str, jax.Array]) -> jax.Array:
  """log [q(x) q(y|x) q(z|x,y) / (p(z) p(x|y,z))] from label_only_log_terms' dict."""
  return (terms["log_q_x"] + terms["log_q_y_given_x"] + terms["log_q_z"]
          - terms["log_p_z"] - terms["log_p_x"])


def label_only_log_weights(model: M2, y: jax.Array, rng: jax.Array, **kwargs) -> jax.Array:
  """The bound's integrand at `num_samples` draws (z, x) ~ p(z)p(x|y,z): y [K] -> [S].

  Each entry is log [q(x) q(y|x) q(z|x,y) / (p(z) p(x|y,z))]: their mean is the
  bound, their log-mean-exp an importance-sampling estimate of log q(y). Keyword
  arguments as label_only_log_terms.
  """
  return log_weights_from_terms(label_only_log_terms(model, y, rng, **kwargs))


def label_only_bound(model: M2, y: jax.Array, rng: jax.Array, *, log_prior_x: LogPriorX,
                     estimator: str = "straight_through", temperature: float = 0.5,
                     num_samples: int = 1, label_smoothing: float = 1.0,
                     z: jax.Array | None = None) -> jax.Array:
  """The inverted bound on log q(y), averaged over `num_samples` draws: y [K] -> [].

  `z` [S, Z] replaces the draws from p(z) (label_only_log_terms)."""
  return jnp.mean(label_only_log_weights(
      model, y, rng, log_prior_x=log_prior_x, estimator=estimator, temperature=temperature,
      num_samples=num_samples, label_smoothing=label_smoothing, z=z))


def uniform_log_prior(x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
  """q(x) uniform over binary images: -D log 2, whatever x is."""
  del rng
  return -x.shape[-1] * jnp.log(2.0)


def fit_pixel_bernoulli(images: np.ndarray, *, eps: float = 1e-3) -> np.ndarray:
  """Per-pixel on-probabilities of uint8 images [N, D] (their mean intensity) -> [D].

  The mean intensity is what dynamic binarisation's pixels average to; clipping to
  [eps, 1-eps] keeps log q(x) finite for pixels never seen on or off.
  """
  probs = images.astype(np.float64).mean(0) / 255.0
  return np.clip(probs, eps, 1.0 - eps).astype(np.float32)


def pixel_bernoulli_log_prior(pixel_probs: jax.Array) -> LogPriorX:
  """q(x) = prod_d Bernoulli(x_d; pixel_probs_d)."""
  logits = jnp.log(pixel_probs) - jnp.log1p(-pixel_probs)
  return lambda x, rng=None: m2.bernoulli_log_prob(x, logits)


def model_log_prior(model: M2, *, num_samples: int = 1) -> LogPriorX:
  """q(x) from an M2's unlabeled bound U(x) <= log p(x) (pass a stop-gradient model):
  the model's own ('model') or a separately trained, fixed one ('pretrained').

  U(x) <= log p(x) keeps the inverted bound a lower bound on log q(y) for the
  normalised q(x) = p(x) = sum_y p(y) int p(z) p(x|y,z) dz (docs/bounds.md)."""
  return lambda x, rng: m2.unlabeled_bound(model, x, rng, num_samples=num_samples)


# ----------------------------------------------------------------------------- other
# label-only objectives (config.objective.label_only); docs/bounds.md has the maths.

LABEL_ONLY_OBJECTIVES = ("bound", "sleep", "class_balance", "batch_posterior", "consistency")
# The signed terms of the inverted bound's integrand; 'sleep' always keeps the first two.
SIGNED_TERMS = {"log_q_y_given_x": 1.0, "log_q_z": 1.0, "log_q_x": 1.0, "log_p_z": -1.0,
                "log_p_x": -1.0}
SLEEP_OPTIONAL_TERMS = ("log_q_x", "log_p_z", "log_p_x")


def check_sleep_terms(extra_terms: tuple[str, ...]) -> None:
  """Raises ValueError naming the terms of `extra_terms` not in SLEEP_OPTIONAL_TERMS."""
  bad = [t for t in extra_terms if t not in SLEEP_OPTIONAL_TERMS]
  if bad:
    raise ValueError(f"objective.sleep_terms={tuple(extra_terms)}: {bad} not in "
                     f"{SLEEP_OPTIONAL_TERMS}.")


def sleep_objective(model: M2, y: jax.Array, rng: jax.Array, *, log_prior_x: LogPriorX,
                    extra_terms: tuple[str, ...] = (), num_samples: int = 1,
                    label_smoothing: float = 1.0, z: jax.Array | None = None) -> jax.Array:
  """The sleep phase of wake-sleep on label-only y: y [K] -> [].

  x ~ p(x|y,z) is a hard sample with no gradient path (the authors' label-only
  term), so the value log q(y|x) + log q(z|x,y) trains the classifier and the
  encoder on the model's own generated pairs and nothing else. `extra_terms`
  (from SLEEP_OPTIONAL_TERMS) adds log q(x), -log p(z), -log p(x|y,z) to the value:
  with all three it is the inverted bound with estimator 'exact', whose decoder
  gradient (through -log p(x|y,z) at a stopped x) has zero mean.
  """
  check_sleep_terms(extra_terms)  # at trace time; a config's at start-up (LabelOnlySettings)
  terms = label_only_log_terms(model, y, rng, log_prior_x=log_prior_x, estimator="exact",
                               num_samples=num_samples, label_smoothing=label_smoothing, z=z)
  kept = ("log_q_y_given_x", "log_q_z", *extra_terms)
  return jnp.mean(sum(SIGNED_TERMS[t] * terms[t] for t in kept))


def class_balance_bound(log_q_unlabeled: jax.Array, targets: jax.Array) -> jax.Array:
  """log (1/B) sum_b q(y|x_b) over the unlabeled batch, for each label-only target.

  log_q_unlabeled [B, K] (log q(k|x_b)), targets [L, K] -> [L]. With q(x) the
  unlabeled data, log q(y) = log mean_n q(y|x_n); this minibatch estimate is a lower
  bound on it in expectation (Jensen). A soft target t scores exp(sum_k t_k log q(k|x_b)).
  """
  scores = targets @ log_q_unlabeled.T  # [L, B]
  return jax.nn.logsumexp(scores, axis=-1) - jnp.log(log_q_unlabeled.shape[0])


def batch_posterior_bound(log_q_unlabeled: jax.Array, unlabeled_elbos: jax.Array,
                          targets: jax.Array) -> jax.Array:
  """sum_b r(b|y) [log q(y|x_b) - log B - log r(b|y)] <= log (1/B) sum_b q(y|x_b).

  log_q_unlabeled, unlabeled_elbos [B, K] (L(x_b, e_k)), targets [L, K] -> [L].
  r(b|y) is the generative model's p(y|x_b) = softmax_k L(x_b, e_k), normalised
  over the batch; the bound holds for any r, so r is held fixed (stop-gradient) and
  the term trains the classifier only, towards images the generative model reads as y.
  """
  log_p_y = jax.lax.stop_gradient(jax.nn.log_softmax(unlabeled_elbos, axis=-1))  # [B, K]
  log_r = jax.nn.log_softmax(targets @ log_p_y.T, axis=-1)  # [L, B], normalised over b
  scores = targets @ log_q_unlabeled.T  # [L, B]
  r = jnp.exp(log_r)
  return jnp.sum(r * (scores - jnp.log(log_q_unlabeled.shape[0]) - log_r), axis=-1)


def consistency_draw(model: M2, y: jax.Array, rng: jax.Array, *,
                     z: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """One (f, log p(x|y,z)) at x ~ p(x|y,z), z ~ p(z) (or the given z [Z]): y [K] -> ([], []).

  f = log q(y|x) with the classifier stopped; x is a hard sample with no gradient path;
  log p(x|y,z) carries the decoder's gradient for the score-function estimator.
  """
  z_key, x_key = jax.random.split(rng)
  if z is None:
    z = jax.random.normal(z_key, (model.latent_dim,))
  logits = model.decoder(y, z)
  x = jax.lax.stop_gradient(jax.random.bernoulli(x_key, jax.nn.sigmoid(logits))
                            .astype(logits.dtype))
  f = jax.lax.stop_gradient(jnp.sum(y * jax.nn.log_softmax(model.classifier(x))))
  return f, m2.bernoulli_log_prob(x, logits)


def consistency_surrogate(f: jax.Array, log_p_x: jax.Array) -> jax.Array:
  """Score-function surrogate of E_{p(z)p(x|y,z)} log q(y|x): f, log_p_x [L] -> [L].

  Forward value f; gradient (f - b) grad log p(x|y,z) with the leave-one-out baseline
  b = mean of the other draws' f, which keeps the estimator unbiased (b does not depend
  on the draw it multiplies). Needs L >= 2.
  """
  n = f.shape[0]
  if n < 2:
    raise ValueError(f"consistency needs a label-only batch of at least 2, got {n}.")
  baseline = (jnp.sum(f) - f) / (n - 1)
  return f + (f - baseline) * (log_p_x - jax.lax.stop_gradient(log_p_x))
