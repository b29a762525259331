"""M2's labeled and unlabeled terms for a whole batch: the training step's fast path.

bounds/m2.py is the reference, written for one example and vmapped over examples and
labels. This module computes the same values, with the same noise, for a batch
x [B, D], with the K label branches of U(x) as explicit [B, K, ...] arrays, and makes
three rewrites that XLA does not find in the vmapped form:

- y is one-hot in U(x), so the y-part of the encoder's and the decoder's first layer is
  row k of the weight matrix, added to the shared x- (encoder) or z-part (decoder):
  no concatenation of [y, z], no matmul with a one-hot;
- the Bernoulli term's sum_d x_d l_d, with l = h W_out + b_out the decoder's output, is
  (x W_out^T) . h + x . b_out per (image, label): x is never broadcast over the K labels
  (nor over the S noise draws), in the forward pass or the backward;
- the noise is drawn from the reference's keys (labeled_noise, unlabeled_noise), so a run
  gives the same numbers (to float rounding) through either path.

tests/bounds_m2_batch_test.py checks values and parameter gradients against the
reference; docs/benchmarks.md says what the rewrites bought.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from untapped_jax import models
from untapped_jax.bounds import m2
from untapped_jax.models import M2


class UnlabeledTerms(NamedTuple):
  """U(x) and the pieces the batch-level label-only objectives reuse."""
  bound: jax.Array  # [B] U(x)
  elbos: jax.Array  # [B, K] L(x, e_k)
  log_q: jax.Array  # [B, K] log q(k|x)


def labeled_noise(rng: jax.Array, batch_size: int, *, num_samples: int,
                  latent_dim: int) -> jax.Array:
  """eps [B, S, Z] as the reference draws it: example b's key is split(rng, B)[b]."""
  return jax.vmap(lambda key: jax.random.normal(key, (num_samples, latent_dim)))(
      jax.random.split(rng, batch_size))


def unlabeled_noise(rng: jax.Array, batch_size: int, *, num_classes: int, num_samples: int,
                    latent_dim: int) -> jax.Array:
  """eps [B, K, S, Z] as the reference draws it: split per example, then per label."""
  per_label = lambda key: labeled_noise(key, num_classes, num_samples=num_samples,
                                        latent_dim=latent_dim)
  return jax.vmap(per_label)(jax.random.split(rng, batch_size))


def _in_dtype(dtype, *arrays: jax.Array) -> tuple[jax.Array, ...]:
  """The arrays in a layer's compute dtype, as nnx.Linear promotes its operands (None:
  their common type)."""
  dtype = dtype or jnp.result_type(*arrays)
  return tuple(a.astype(dtype) for a in arrays)


def _at_least_f32(a: jax.Array) -> jax.Array:
  return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def decoder_log_prob(decoder: models.Decoder, x: jax.Array, z: jax.Array) -> jax.Array:
  """log p(x | y = e_k, z) for every label k: x [B, D], z [B, K, S, Z] -> [B, K, S]."""
  layers, act = decoder.net.layers, decoder.net.activation
  first, last = layers[0], layers[-1]
  num_classes = z.shape[1]
  kernel, bias = first.kernel[...], first.bias[...]
  z_part, y_rows, bias = _in_dtype(first.dtype, z, kernel[:num_classes], bias)
  # [y, z] W + b with y = e_k: z W_z + (row k of W_y) + b.
  h = act(z_part @ _in_dtype(first.dtype, kernel[num_classes:])[0]
          + y_rows[None, :, None, :] + bias)
  for layer in layers[1:-1]:
    h = act(layer(h))
  logits = _at_least_f32(last(h))  # [B, K, S, D]
  out_kernel, out_bias, x_in = _in_dtype(last.dtype, last.kernel[...], last.bias[...], x)
  x_dot_logits = (jnp.einsum("bh,bksh->bks", x_in @ out_kernel.T, _in_dtype(last.dtype, h)[0])
                  + (x_in @ out_bias)[:, None, None])
  return _at_least_f32(x_dot_logits) - jnp.sum(models.softplus(logits), -1)


def labeled_elbos_all_classes(model: M2, x: jax.Array, eps: jax.Array) -> jax.Array:
  """L(x, e_k) for every class k: x [B, D], eps [B, K, S, Z] -> [B, K]."""
  encoder = model.encoder
  shared = encoder.from_x(x)  # [B, H]: W_x x + b, once per image
  rows = encoder.from_y(jnp.eye(model.num_classes, dtype=x.dtype))  # [K, H]: W_y e_k
  mean, log_var = jnp.split(
      encoder.net(encoder.activation(shared[:, None, :] + rows[None])), 2, axis=-1)
  z = mean[:, :, None] + jnp.exp(0.5 * log_var)[:, :, None] * eps  # [B, K, S, Z]
  log_px = decoder_log_prob(model.decoder, x, z).mean(-1)
  kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var, -1)
  return log_px - jnp.log(model.num_classes) - kl


def unlabeled_terms(model: M2, x: jax.Array, eps: jax.Array) -> UnlabeledTerms:
  """U(x) = sum_y q(y|x) L(x, y) + H[q(y|x)] with y enumerated exactly:
  x [B, D], eps [B, K, S, Z] (unlabeled_noise) -> UnlabeledTerms."""
  log_q = jax.nn.log_softmax(model.classifier(x))
  elbos = labeled_elbos_all_classes(model, x, eps)
  return UnlabeledTerms(bound=jnp.sum(jnp.exp(log_q) * (elbos - log_q), -1), elbos=elbos,
                        log_q=log_q)


def labeled_elbo(model: M2, x: jax.Array, y: jax.Array, eps: jax.Array) -> jax.Array:
  """L(x, y) <= log p(x, y) for labels y that may be soft: x [B, D], y [B, K],
  eps [B, S, Z] (labeled_noise) -> [B]."""
  mean, log_var = model.encoder(x, y)  # [B, Z]
  z = mean[:, None] + jnp.exp(0.5 * log_var)[:, None] * eps  # [B, S, Z]
  logits = model.decoder(jnp.broadcast_to(y[:, None], z.shape[:2] + y.shape[-1:]), z)
  log_px = jnp.sum(x[:, None] * logits - models.softplus(logits), -1).mean(-1)
  return log_px + jax.vmap(m2.log_prior_y)(y) - jax.vmap(m2.gaussian_kl)(mean, log_var)

