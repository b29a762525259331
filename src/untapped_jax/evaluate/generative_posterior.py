"""The generative model's own posterior over y: p(y|x) = p(y) p(x|y) / p(x), not q(y|x).

M2's unlabeled term trains q(y|x) towards this posterior (U(x) = log p(x) - KL(q(y,z|x) ||
p(y,z|x))), so comparing the two on held-out images says which one limits a run: a
posterior that classifies better than q(y|x) points at the inference network, one that
classifies no better at the generative model itself. log p(x|y) is estimated by importance
sampling with q(z|x,y) as the proposal (Burda et al.'s IWAE bound, tight as the number of
samples grows).
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from untapped_jax.bounds import m2
from untapped_jax.models import M2


def log_normal(z: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """log N(z; mean, diag(exp(log_var))): [..., Z] -> [...]."""
  return -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + log_var
                        + jnp.square(z - mean) / jnp.exp(log_var), -1)


def importance_log_joint(model: M2, x: jax.Array, y: jax.Array, eps: jax.Array) -> jax.Array:
  """log mean_s p(x, y, z_s) / q(z_s|x,y) with z_s = mean + std * eps_s, an estimate of
  log p(x, y) from below in expectation: x [D], y [K] one-hot, eps [S, Z] -> []."""
  mean, log_var = model.encoder(x, y)
  z = mean + jnp.exp(0.5 * log_var) * eps  # [S, Z]
  logits = model.decoder(jnp.broadcast_to(y, (eps.shape[0],) + y.shape), z)
  log_px = jax.vmap(m2.bernoulli_log_prob, (None, 0))(x, logits)  # [S]
  zeros = jnp.zeros_like(mean)
  log_w = (log_px + m2.log_prior_y(y) + log_normal(z, zeros, zeros)
           - log_normal(z, mean, log_var))
  return jax.nn.logsumexp(log_w) - jnp.log(eps.shape[0])


def posterior_log_probs(model: M2, x: jax.Array, rng: jax.Array, *,
                        num_samples: int) -> jax.Array:
  """log p(y|x) for every class, each log p(x, y) importance-sampled with num_samples
  draws of its own: x [D] -> [K] (normalised over the K classes)."""
  labels = jnp.eye(model.num_classes, dtype=x.dtype)
  eps = jax.random.normal(rng, (model.num_classes, num_samples, model.latent_dim))
  log_joint = jax.vmap(lambda y, e: importance_log_joint(model, x, y, e))(labels, eps)
  return jax.nn.log_softmax(log_joint)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_samples"))
def _batch_predictions(graphdef: nnx.GraphDef, params, x: jax.Array, rng: jax.Array, *,
                       num_samples: int) -> tuple[jax.Array, jax.Array]:
  model = nnx.merge(graphdef, params)
  keys = jax.random.split(rng, x.shape[0])
  log_p = jax.vmap(lambda xi, k: posterior_log_probs(model, xi, k,
                                                     num_samples=num_samples))(x, keys)
  return jnp.argmax(log_p, -1), jnp.argmax(model.classifier(x), -1)


def predictions(graphdef: nnx.GraphDef, params, x: np.ndarray, rng: jax.Array, *,
                num_samples: int = 64, batch_size: int = 250) -> tuple[np.ndarray, np.ndarray]:
  """(argmax_y p(y|x), argmax_y q(y|x)) for images x [N, D] -> (int [N], int [N])."""
  posterior, classifier = [], []
  for start in range(0, len(x), batch_size):
    p, q = _batch_predictions(graphdef, params, jnp.asarray(x[start:start + batch_size]),
                              jax.random.fold_in(rng, start), num_samples=num_samples)
    posterior.append(np.asarray(p))
    classifier.append(np.asarray(q))
  return np.concatenate(posterior), np.concatenate(classifier)
