"""M2's per-example terms (Kingma, Rezende, Mohamed, Welling 2014), in nats.

Shapes are for ONE example: x [D] in [0, 1], y [K] one-hot (or soft), rng a key.
`model` is an `untapped_jax.models.M2` (inside a jitted step: nnx.merge(graphdef, params)).
Everything is a quantity to maximise; losses negate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from untapped_jax import models
from untapped_jax.models import M2


def bernoulli_log_prob(x: jax.Array, logits: jax.Array) -> jax.Array:
  """log p(x) for independent Bernoulli(sigmoid(logits)) pixels: x, logits [D] -> [].

  x log s(l) + (1 - x) log s(-l) = x l - softplus(l): one softplus, not two.
  """
  return jnp.sum(x * logits - models.softplus(logits))


def gaussian_kl(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """KL(N(mean, exp(log_var)) || N(0, I)) in closed form: [Z], [Z] -> []."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var)


def log_prior_y(y: jax.Array) -> jax.Array:
  """log p(y) under the uniform prior: y [K] -> []."""
  return -jnp.log(y.shape[-1]) * jnp.sum(y)


def labeled_elbo_given_noise(model: M2, x: jax.Array, y: jax.Array,
                             eps: jax.Array) -> jax.Array:
  """ELBO(x, y) with z = mean + std * eps: x [D], y [K], eps [S, Z] -> [].

  log p(x|y,z) averaged over the S noise draws, + log p(y) - KL(q(z|x,y) || p(z)).
  """
  mean, log_var = model.encoder(x, y)
  z = mean + jnp.exp(0.5 * log_var) * eps  # [S, Z]
  logits = model.decoder(jnp.broadcast_to(y, (eps.shape[0],) + y.shape), z)
  log_px = jax.vmap(bernoulli_log_prob, (None, 0))(x, logits).mean()
  return log_px + log_prior_y(y) - gaussian_kl(mean, log_var)


def labeled_elbo(model: M2, x: jax.Array, y: jax.Array, rng: jax.Array, *,
                 num_samples: int = 1) -> jax.Array:
  """The labeled bound L(x, y) <= log p(x, y): x [D], y [K] -> []."""
  eps = jax.random.normal(rng, (num_samples, model.latent_dim))
  return labeled_elbo_given_noise(model, x, y, eps)


def labeled_elbos_all_classes(model: M2, x: jax.Array, rng: jax.Array, *,
                              num_samples: int = 1) -> jax.Array:
  """L(x, e_k) for every class k, vmapped over the K one-hot labels: x [D] -> [K]."""
  labels = jnp.eye(model.num_classes, dtype=x.dtype)
  return jax.vmap(lambda y, key: labeled_elbo(model, x, y, key, num_samples=num_samples))(
      labels, jax.random.split(rng, model.num_classes))


def unlabeled_bound_terms(model: M2, x: jax.Array, rng: jax.Array, *,
                          num_samples: int = 1) -> dict[str, jax.Array]:
  """U(x) with the pieces other terms reuse: x [D] -> {'bound' [], 'elbos' [K], 'log_q' [K]}.

  'elbos' are L(x, e_k); 'log_q' is log q(k|x). softmax_k('elbos') is the generative
  model's own (approximate) posterior p(y|x).
  """
  log_q = jax.nn.log_softmax(model.classifier(x))
  elbos = labeled_elbos_all_classes(model, x, rng, num_samples=num_samples)
  q = jnp.exp(log_q)
  return {"bound": jnp.sum(q * (elbos - log_q)), "elbos": elbos, "log_q": log_q}


def unlabeled_bound(model: M2, x: jax.Array, rng: jax.Array, *,
                    num_samples: int = 1) -> jax.Array:
  """U(x) = sum_y q(y|x) L(x, y) + H[q(y|x)] <= log p(x): x [D] -> [].

  y is enumerated exactly: L is vmapped over the K one-hot labels.
  """
  return unlabeled_bound_terms(model, x, rng, num_samples=num_samples)["bound"]


def classification_log_prob(model: M2, x: jax.Array, y: jax.Array) -> jax.Array:
  """log q(y|x) = sum_k y_k log q(k|x): x [D], y [K] -> []."""
  return jnp.sum(y * jax.nn.log_softmax(model.classifier(x)))
