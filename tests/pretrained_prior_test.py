"""objective.image_prior='pretrained': q(x) is a separately trained M2's U(x), held fixed.

The inverted bound with it is checked on a tiny model against brute force: the
prior's normalised marginal p_pre(x) = sum_y p(y) int p(z) p(x|y,z) dz by enumeration
of the 2^D images and Gauss-Hermite quadrature over a 2-d z, and log q(y) =
log sum_x p_pre(x) q(y|x) exactly. Since U(x) <= log p_pre(x), the bound must stay
below that log q(y); the direct estimate (sampling the prior ancestrally) must match it.
"""

from __future__ import annotations

import itertools
import json

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from untapped_jax import objective
from untapped_jax import train
from untapped_jax.bounds import m2
from untapped_jax.evaluate import likelihood
from untapped_jax.models import M2

from real_mnist import needs_mnist

from numpy_reference import NumpyM2
from poster_smoke_test import load_poster_config
from numpy_reference import np_logsumexp
from protocols_test import ACTIVATION
from protocols_test import set_param

D, K = 4, 3
ALL_X = np.array(list(itertools.product([0.0, 1.0], repeat=D)))  # [16, D]


def _tiny(seed: int, scale: float) -> M2:
  model = M2(num_pixels=D, num_classes=K, latent_dim=2, hidden=(6,), activation=ACTIVATION,
             rngs=nnx.Rngs(seed))
  for layer in (model.classifier.net.layers[-1], model.decoder.net.layers[-1]):
    set_param(layer.kernel, np.asarray(layer.kernel[...]) * scale)  # far from uniform
  return model


@pytest.fixture(scope="module")
def tiny():
  prior, model = _tiny(5, 3.0), _tiny(3, 4.0)
  prior_graphdef, prior_params = nnx.split(prior)
  settings = objective.LabelOnlySettings(image_prior="pretrained", prior_graphdef=prior_graphdef,
                                         prior_params=prior_params)
  ref = NumpyM2(prior, ACTIVATION)
  log_p_x_given_y = np.stack([[ref.log_px_given_y_quadrature(x, np.eye(K)[c]) for x in ALL_X]
                              for c in range(K)])  # [K, 16]
  log_p_pre = np_logsumexp(log_p_x_given_y.T - np.log(K))  # [16]
  log_q_y_given_x = NumpyM2(model, ACTIVATION).log_q_y_given_x(ALL_X)  # [16, K]
  exact_log_q_y = np_logsumexp(log_p_pre[:, None] + log_q_y_given_x, 0)  # [K]
  return dict(prior=prior, model=model, settings=settings, log_p_pre=log_p_pre,
              exact_log_q_y=exact_log_q_y)


def test_the_prior_is_a_normalised_density_and_u_stays_below_it(tiny):
  np.testing.assert_allclose(np.exp(tiny["log_p_pre"]).sum(), 1.0, rtol=1e-9)
  graphdef, params = nnx.split(tiny["model"])
  log_prior = tiny["settings"].log_prior_x(graphdef, params)
  keys = jax.random.split(jax.random.key(0), 2000)
  u = jax.vmap(lambda key: jax.vmap(log_prior, in_axes=(0, None))(jnp.asarray(ALL_X), key))(keys)
  u = np.asarray(u, np.float64)  # [2000, 16]
  mean, se = u.mean(0), u.std(0) / np.sqrt(len(u))
  assert np.all(mean <= tiny["log_p_pre"] + 4 * se)
  # Not the trained model's own U(x): the prior's, key for key.
  own = untapped_own_u(tiny["model"], keys[0])
  prior_u = untapped_own_u(tiny["prior"], keys[0])
  np.testing.assert_allclose(u[0], prior_u, rtol=1e-5, atol=1e-5)
  assert not np.allclose(u[0], own, atol=1e-2)


def untapped_own_u(model, key):
  return np.asarray(jax.vmap(lambda x: m2.unlabeled_bound(model, x, key))(jnp.asarray(ALL_X)))


def test_bound_is_below_exact_log_q_y_and_direct_estimate_matches_it(tiny):
  graphdef, params = nnx.split(tiny["model"])
  report = likelihood.label_only_report(graphdef, params, tiny["settings"],
                                        test_labels=np.arange(K), rng=jax.random.key(1),
                                        num_samples=4000)
  bound = np.asarray(report["label_only_bound_per_class"])
  exact = tiny["exact_log_q_y"]
  assert np.all(np.isfinite(bound))
  assert np.all(bound < exact), (bound, exact)
  direct = np.asarray(report["log_q_y_direct_per_class"])
  se = np.asarray(report["log_q_y_direct_se_per_class"])
  np.testing.assert_array_less(np.abs(direct - exact), 4 * se + 1e-3)


def test_no_gradient_reaches_the_prior(tiny):
  graphdef, params = nnx.split(tiny["model"])
  s = tiny["settings"]

  def bound_of_prior(prior_params):
    settings = objective.LabelOnlySettings(image_prior="pretrained",
                                           prior_graphdef=s.prior_graphdef,
                                           prior_params=prior_params)
    return objective.label_only_terms(
        nnx.merge(graphdef, params), jnp.eye(K), jax.random.key(2), settings=settings,
        log_prior_x=settings.log_prior_x(graphdef, params)).sum()

  grads = jax.grad(bound_of_prior)(s.prior_params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_missing_prior_is_named():
  with pytest.raises(ValueError, match="image_prior='pretrained' needs"):
    objective.LabelOnlySettings(image_prior="pretrained").check()
  with pytest.raises(ValueError, match="objective.image_prior_workdir"):
    objective.pretrained_image_prior("")
  with pytest.raises(ValueError, match=r"objective.image_prior_workdir: workdir '/nonexistent'"):
    objective.pretrained_image_prior("/nonexistent")


@pytest.mark.slow
@needs_mnist
def test_a_finished_m2_run_is_the_prior_of_an_untapped_run(tmp_path, session_caches):
  m2_config = load_poster_config("model=m2,runlocal", session_caches)
  m2_config.eval.semantic = False
  train.train_and_evaluate(m2_config, str(tmp_path / "prior"))
  config = load_poster_config("model=untapped,label_only=bound,runlocal", session_caches)
  config.objective.image_prior = "pretrained"
  config.objective.image_prior_workdir = str(tmp_path / "prior")
  config.eval.strong_evaluator = False
  train.train_and_evaluate(config, str(tmp_path / "untapped"))
  results = json.loads((tmp_path / "untapped" / "results.json").read_text())
  terms = results["label_only_terms_per_class"]
  # log q(x) is the prior's U(x) on the samples: a real image model, far above uniform.
  assert all(np.isfinite(t["log_q_x"]) and t["log_q_x"] > -784 * np.log(2) for t in terms)
  assert np.isfinite(results["test_log_q_y_direct"]) and results["test_log_q_y_direct"] <= 0
  assert np.isfinite(results["test_label_only_bound"])
