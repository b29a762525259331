"""Held-out evaluation of a run: accuracy of q(y|x) and M2's bounds (nats) on a split.

The bounds are objective.batch_terms, the training loss's own per-example terms,
with the split's images as both the labeled and the unlabeled batch.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp

from untapped_jax import objective
from untapped_jax import rng as rng_lib
from untapped_jax.data import splits as splits_lib
from untapped_jax.data import streams as streams_lib


@functools.partial(jax.jit, static_argnames="graphdef")
def batch_sums(graphdef: nnx.GraphDef, params: nnx.State, x: jax.Array, labels: jax.Array,
               rng: jax.Array) -> dict[str, jax.Array]:
  """x [B, D] binarised, labels int [B] -> sums over the batch of 'correct' (argmax
  q(y|x) == label), 'labeled_elbo' L(x, y) and 'unlabeled_bound' U(x)."""
  model = nnx.merge(graphdef, params)
  batch = {"labeled": {"x": x, "y": jax.nn.one_hot(labels, model.num_classes)},
           "unlabeled": {"x": x}}
  terms = objective.batch_terms(model, batch, rng)
  return {"correct": jnp.sum(jnp.argmax(terms["unlabeled_log_q"], -1) == labels),
          "labeled_elbo": jnp.sum(terms["labeled_elbo"]),
          "unlabeled_bound": jnp.sum(terms["unlabeled_bound"])}


def evaluate(graphdef: nnx.GraphDef, params: nnx.State, split: splits_lib.Split, *,
             batch_size: int, binarization: str, seed: int
             ) -> dict[str, float]:
  """Accuracy of q(y|x) and mean bounds (nats) over `split`: one fixed binarisation
  and one fixed set of draws per seed, so two evaluations of the same parameters agree."""
  totals: dict[str, float] = {}
  rng = rng_lib.key(seed, rng_lib.Stream.HELDOUT)
  for start in range(0, len(split), batch_size):
    bin_rng, rng_b = jax.random.split(jax.random.fold_in(rng, start))
    x = streams_lib.binarize(jnp.asarray(split.images[start:start + batch_size]), bin_rng,
                             mode=binarization)
    sums = batch_sums(graphdef, params, x, jnp.asarray(split.labels[start:start + batch_size]),
                      rng_b)
    for k, v in jax.device_get(sums).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  n = len(split)
  return {"accuracy": totals.pop("correct") / n, **{k: v / n for k, v in totals.items()}}
