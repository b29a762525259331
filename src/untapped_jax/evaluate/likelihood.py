"""The label-only bound, an importance-sampling estimate of log q(y), and their gap.

Both depend on y only through its class, so they are computed once per class
with many draws and averaged with the test set's class frequencies.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from untapped_jax.bounds import untapped


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


def label_only_report(graphdef: nnx.GraphDef, params, settings, *, test_labels: np.ndarray,
                      rng: jax.Array, num_samples: int, chunk: int = 500) -> dict[str, float]:
  """Per-class and test-weighted label-only bound, IS log q(y) and gap, in nats.

  `settings` is an objective.LabelOnlySettings (it picks q(x)).
  """
  model = nnx.merge(graphdef, params)
  log_prior_x = settings.log_prior_x(graphdef, params)
  k = model.num_classes

  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples}: expected a positive integer.")
  chunk = min(chunk, num_samples)

  @jax.jit
  def log_terms(y, key):
    return untapped.label_only_log_terms(model, y, key, log_prior_x=log_prior_x,
                                         estimator="exact", num_samples=chunk)

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
  return {"test_label_only_bound": bound, "test_log_q_y_is": log_q,
          "label_only_gap": log_q - bound,
          "label_only_bound_per_class": per_class_bound,
          "log_q_y_is_per_class": per_class_log_q,
          # Mean of each log-density in the bound, per class: where the nats go.
          "label_only_terms_per_class": per_class_terms}
