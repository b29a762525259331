"""Tests of evaluate/likelihood.py: the label-only bound, the importance-sampling
estimate of log q(y) and their gap (label_only_report), and the direct estimate of
log q(y) (direct_log_q_y).

Both are checked against exact enumeration of every binary image of a tiny model:
label_only_report against the closed-form bound and log q(y) of a model whose
encoder is p(z) and whose decoder ignores z, with Monte Carlo tolerances from the
exact variances, and its test-set figures against the class-frequency weighting of
its per-class ones; direct_log_q_y and its standard error against the enumerated
sum_x q(x) q(y|x) and its exact sampling variance.
"""

from __future__ import annotations

import itertools

from flax import nnx
import jax
import numpy as np
import pytest

from untapped_jax import objective
from untapped_jax.evaluate import likelihood
from untapped_jax.models import M2

from numpy_reference import NumpyM2
from numpy_reference import np_bernoulli
from protocols_test import ACTIVATION
from protocols_test import set_param


# ----------------------------------------------------------------------------- label_only_report


@pytest.mark.slow
def test_label_only_report_against_exact_enumeration():
  # A tiny model where both figures have closed forms over all 2^6 images: the
  # encoder outputs mean 0, log-variance 0 (q(z|x,y) = p(z)) and the decoder ignores
  # z (p(x|y,z) = p(x|y)). Then, with w = q(x) q(y|x) / p(x|y) and x ~ p(x|y),
  #   bound = sum_x p(x|y) log w,    log q(y) = log sum_x q(x) q(y|x) = log E[w].
  d, k, z_dim = 6, 3, 2
  model = M2(num_pixels=d, num_classes=k, latent_dim=z_dim, hidden=(5,), activation="softplus",
             rngs=nnx.Rngs(4))
  (enc_out,) = model.encoder.net.layers
  set_param(enc_out.kernel, np.zeros((5, 2 * z_dim)))
  set_param(enc_out.bias, np.zeros(2 * z_dim))
  dec_in = model.decoder.net.layers[0]
  kernel = np.asarray(dec_in.kernel[...]).copy()
  kernel[k:] = 0.0  # rows fed by z
  set_param(dec_in.kernel, kernel)
  graphdef, params = nnx.split(model)
  pixel_probs = np.array([0.1, 0.3, 0.5, 0.6, 0.8, 0.95], np.float32)
  settings = objective.LabelOnlySettings(image_prior="pixel_bernoulli",
                                         pixel_probs=pixel_probs)
  test_labels = np.array([0] * 5 + [1] * 3 + [2] * 12)
  num_samples = 4000
  report = likelihood.label_only_report(graphdef, params, settings, test_labels=test_labels,
                                        rng=jax.random.key(0), num_samples=num_samples,
                                        chunk=500)

  per_bound = np.asarray(report["label_only_bound_per_class"])
  per_log_q = np.asarray(report["log_q_y_is_per_class"])
  assert per_bound.shape == per_log_q.shape == (k,)
  for key in ("test_label_only_bound", "test_log_q_y_is", "label_only_gap"):
    assert np.isfinite(report[key]), report

  all_x = np.array(list(itertools.product([0.0, 1.0], repeat=d)))  # [64, D]
  p = pixel_probs.astype(np.float64)
  log_q_x = (all_x * np.log(p) + (1 - all_x) * np.log1p(-p)).sum(1)  # [64]
  ref = NumpyM2(model, "softplus")
  log_q_y_given_x = ref.log_q_y_given_x(all_x)  # [64, K]
  dec_logits = ref.decoder_logits(np.eye(k), np.zeros((k, z_dim)))  # [K, D]
  log_p_x_given_y = np_bernoulli(all_x[None], dec_logits[:, None])  # [K, 64]
  np.testing.assert_allclose(np.exp(log_p_x_given_y).sum(1), 1.0, rtol=1e-9)
  log_w = log_q_x[None] + log_q_y_given_x.T - log_p_x_given_y  # [K, 64]
  pmf = np.exp(log_p_x_given_y)
  exact_bound = np.sum(pmf * log_w, 1)
  exact_log_q = np.logaddexp.reduce(log_q_x[:, None] + log_q_y_given_x, axis=0)
  np.testing.assert_allclose(np.exp(exact_log_q).sum(), 1.0, rtol=1e-9)
  np.testing.assert_allclose(np.log(np.sum(pmf * np.exp(log_w), 1)), exact_log_q, rtol=1e-9)
  # Monte Carlo tolerances from the exact variances (5 standard errors).
  se_bound = np.sqrt(np.sum(pmf * (log_w - exact_bound[:, None]) ** 2, 1) / num_samples)
  mean_w = np.exp(exact_log_q)
  se_log_q = np.sqrt(np.sum(pmf * (np.exp(log_w) - mean_w[:, None]) ** 2, 1)
                     / num_samples) / mean_w
  assert np.all(np.abs(per_bound - exact_bound) < 5 * se_bound + 1e-4), (per_bound,
                                                                          exact_bound)
  assert np.all(np.abs(per_log_q - exact_log_q) < 5 * se_log_q + 1e-4), (per_log_q,
                                                                         exact_log_q)
  assert np.all(exact_log_q - exact_bound > 10 * se_bound)  # a real gap, resolved
  assert np.all(per_log_q >= per_bound)

  # Test-weighted with the class frequencies 5/20, 3/20, 12/20.
  weights = np.array([5, 3, 12]) / 20
  assert report["test_label_only_bound"] == pytest.approx(
      np.average(per_bound, weights=weights), rel=1e-6)
  assert report["test_log_q_y_is"] == pytest.approx(np.average(per_log_q, weights=weights),
                                                    rel=1e-6)
  assert report["label_only_gap"] == pytest.approx(
      report["test_log_q_y_is"] - report["test_label_only_bound"], abs=1e-9)
  assert report["label_only_gap"] == pytest.approx(
      weights @ (exact_log_q - exact_bound), abs=5 * float(weights @ (se_bound + se_log_q)))


@pytest.mark.slow
def test_label_only_report_random_model_uniform_prior():
  k = 4
  model = M2(num_pixels=6, num_classes=k, latent_dim=2, hidden=(5,), rngs=nnx.Rngs(9))
  graphdef, params = nnx.split(model)
  settings = objective.LabelOnlySettings(image_prior="uniform")
  test_labels = np.array([0, 1, 1, 3, 3, 3, 3])  # class 2 absent from the test set
  report = likelihood.label_only_report(graphdef, params, settings, test_labels=test_labels,
                                        rng=jax.random.key(1), num_samples=500)
  per_bound = report["label_only_bound_per_class"]
  per_log_q = report["log_q_y_is_per_class"]
  assert len(per_bound) == len(per_log_q) == k
  assert np.all(np.isfinite(per_bound)) and np.all(np.isfinite(per_log_q))
  # log-mean-exp >= mean of the same draws: the gap is non-negative class by class.
  assert np.all(np.asarray(per_log_q) - np.asarray(per_bound) >= -1e-5)
  assert report["label_only_gap"] >= -1e-5
  assert np.all(np.asarray(per_log_q) < 0.5)  # log q(y) <= 0 up to noise
  weights = np.array([1, 2, 0, 4]) / 7
  assert report["test_label_only_bound"] == pytest.approx(weights @ per_bound, rel=1e-6)
  assert report["test_log_q_y_is"] == pytest.approx(weights @ per_log_q, rel=1e-6)


# ----------------------------------------------------------------------------- direct log q(y)


D, K = 4, 3
ALL_X = np.array(list(itertools.product([0.0, 1.0], repeat=D)))  # [16, D]
PIXEL_PROBS = np.array([0.15, 0.4, 0.7, 0.9], np.float32)


@pytest.fixture(scope="module")
def tiny():
  model = M2(num_pixels=D, num_classes=K, latent_dim=2, hidden=(6,), activation=ACTIVATION,
             rngs=nnx.Rngs(3))
  out = model.classifier.net.layers[-1]
  set_param(out.kernel, np.asarray(out.kernel[...]) * 4.0)  # q(y|x) varies with x
  graphdef, params = nnx.split(model)
  q_y_given_x = np.exp(NumpyM2(model, ACTIVATION).log_q_y_given_x(ALL_X))  # [16, K]
  return graphdef, params, q_y_given_x


def settings_and_q_x(prior):
  if prior == "uniform":
    return objective.LabelOnlySettings(image_prior="uniform"), np.full(len(ALL_X), 1 / 16)
  p = PIXEL_PROBS.astype(np.float64)
  q_x = np.prod(np.where(ALL_X == 1, p, 1 - p), 1)
  return objective.LabelOnlySettings(image_prior="pixel_bernoulli",
                                     pixel_probs=PIXEL_PROBS), q_x


def exact_log_q_y_and_se(q_x, q_y_given_x, num_samples):
  mean = q_x @ q_y_given_x  # [K]
  var = q_x @ (q_y_given_x - mean) ** 2
  return np.log(mean), np.sqrt(var / num_samples) / mean


@pytest.mark.parametrize("prior", ["pixel_bernoulli", "uniform"])
def test_direct_log_q_y_against_enumeration(tiny, prior):
  graphdef, params, q_y_given_x = tiny
  settings, q_x = settings_and_q_x(prior)
  assert q_x.sum() == pytest.approx(1.0)
  s = 20000
  exact, exact_se = exact_log_q_y_and_se(q_x, q_y_given_x, s)
  assert np.exp(exact).sum() == pytest.approx(1.0)
  est, se = likelihood.direct_log_q_y(graphdef, params, settings, rng=jax.random.key(0),
                                      num_samples=s, chunk=5000)
  assert est.shape == se.shape == (K,)
  assert np.all(np.abs(est - exact) < 4 * exact_se), (est, exact, exact_se)
  np.testing.assert_allclose(se, exact_se, rtol=0.1)
  assert np.all(exact_se > 1e-3)  # a resolved test, not a constant q(y|x)


def test_direct_log_q_y_se_matches_the_spread(tiny):
  graphdef, params, q_y_given_x = tiny
  settings, q_x = settings_and_q_x("pixel_bernoulli")
  s, repeats = 400, 40
  runs = [likelihood.direct_log_q_y(graphdef, params, settings, rng=jax.random.key(100 + i),
                                    num_samples=s, chunk=400) for i in range(repeats)]
  estimates = np.stack([r[0] for r in runs])
  reported = np.stack([r[1] for r in runs]).mean(0)
  spread = estimates.std(0, ddof=1)
  _, exact_se = exact_log_q_y_and_se(q_x, q_y_given_x, s)
  # The sd of 40 draws is within ~25% of the truth (3 sigma: 1/sqrt(2 * 39) = 11%).
  np.testing.assert_allclose(spread, reported, rtol=0.35)
  np.testing.assert_allclose(reported, exact_se, rtol=0.1)
  # Another rng: other draws, so the estimates are not all the same.
  assert len({float(e[0]) for e in estimates}) == repeats
