"""Images from each y dimension of a trained model, and its classifier's predictions."""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np


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
