"""Numeric tests of Untapped's label-only bound (untapped_jax.bounds.untapped).

The bound, per label y [K]:

  log q(y) >= E_{z~p(z), x~p(x|y,z)} [ log q(x) + log q(y|x) + log q(z|x,y)
                                       - log p(z) - log p(x|y,z) ],
  q(y) = sum_x q(x) q(y|x) over binary images x.

Every number is checked against an independent computation: brute-force
enumeration of all 2^D binary images, tensor Gauss-Hermite quadrature over z,
NumPy forward passes built from the raw weight arrays, closed-form KLs and
derivatives, scipy densities, and hand-set networks whose gap is known.  The
code's own output is compared with itself only where the property is an
identity of the code path (lambda = 0 is M2, stop-gradient == frozen copy).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from untapped_jax import objective
from untapped_jax.bounds import m2
from untapped_jax.bounds import untapped
from untapped_jax.evaluate import likelihood
from untapped_jax.models import M2

# The independent NumPy (float64) reference, built from the raw weight arrays.
from numpy_reference import NumpyM2
from numpy_reference import np_bernoulli
from numpy_reference import np_log_normal
from numpy_reference import np_logsumexp
from tiny_models import tiny_m2

D, K, Z, H = 4, 3, 2, (6,)
ACTIVATION = "tanh"
ALL_X = np.array(list(itertools.product([0.0, 1.0], repeat=D)))  # [16, D]
EYE = np.eye(K)
PIXEL_PROBS = np.array([0.2, 0.7, 0.45, 0.9], np.float32)


def _model(seed: int, *, bias_scale: float = 0.3, out_scale: float = 1.0) -> M2:
  """Tiny tanh M2 with non-zero random biases (the default init has zero biases)."""
  model = tiny_m2(seed, num_pixels=D, num_classes=K, latent_dim=Z, hidden=H,
                  activation=ACTIVATION, bias_seed=1000 + seed, bias_scale=bias_scale)
  # Keep q(z|x,y)'s variance near p(z)'s so the importance weights have finite variance.
  last = model.encoder.net.layers[-1]
  last.kernel[...] = last.kernel[...] * out_scale
  return model


def _np_pixel_log_prior(probs):
  probs = np.asarray(probs, np.float64)
  return lambda x: np.sum(x * np.log(probs) + (1 - x) * np.log1p(-probs), -1)


def _np_uniform_log_prior(x):
  return np.full(np.shape(x)[:-1], -D * np.log(2.0))


def _exact_log_q_y(ref: NumpyM2, np_log_prior_x) -> np.ndarray:
  """log q(y) = log sum_x q(x) q(y|x) over all 2^D binary images: [K]."""
  joint = np_log_prior_x(ALL_X)[:, None] + ref.log_q_y_given_x(ALL_X)  # [16, K]
  return np_logsumexp(joint, axis=0)


def _quadrature_bound(ref: NumpyM2, np_log_prior_x, y, n=32) -> float:
  """E_{z~p(z), x~p(x|y,z)} of the integrand: Gauss-Hermite over z, enumeration over x."""
  nodes, weights = np.polynomial.hermite_e.hermegauss(n)
  weights = weights / np.sqrt(2 * np.pi)
  z = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, Z)  # [G, Z]
  w = np.outer(weights, weights).reshape(-1)  # [G]
  logits = ref.decoder_logits(y, z)  # [G, D]
  log_p_x = np_bernoulli(ALL_X[None], logits[:, None])  # [G, 16]
  mean, log_var = ref.encode(ALL_X, np.broadcast_to(y, (len(ALL_X), K)))  # [16, Z]
  log_q_z = np_log_normal(z[:, None], mean[None], log_var[None])  # [G, 16]
  log_p_z = np_log_normal(z, 0.0, 0.0)[:, None]
  log_q_y = (ref.log_q_y_given_x(ALL_X) @ y)[None]
  integrand = np_log_prior_x(ALL_X)[None] + log_q_y + log_q_z - log_p_z - log_p_x
  return float(np.sum(w[:, None] * np.exp(log_p_x) * integrand))


def _jax_prior(name: str, model: M2):
  """log q(x) passed to the bound, by name (built inside the jitted function)."""
  if name == "uniform":
    return untapped.uniform_log_prior
  if name == "pixel_bernoulli":
    return untapped.pixel_bernoulli_log_prior(jnp.asarray(PIXEL_PROBS))
  if name == "templates":
    return _template_mixture_log_prior
  if name == "model":
    return untapped.model_log_prior(model)
  raise AssertionError(name)


@functools.partial(jax.jit, static_argnames=("graphdef", "prior", "num", "estimator",
                                             "smoothing"))
def _log_weights_jit(graphdef, params, labels, keys, *, prior, num, estimator, smoothing):
  model = nnx.merge(graphdef, params)
  log_prior_x = _jax_prior(prior, model)
  return jax.vmap(lambda y, key: untapped.label_only_log_weights(
      model, y, key, log_prior_x=log_prior_x, estimator=estimator, num_samples=num,
      label_smoothing=smoothing))(labels, keys)


def _log_weights(model, labels, keys, *, prior, num, estimator="exact", smoothing=1.0):
  """label_only_log_weights for labels [B, K] with keys [B] -> [B, num] (float64).

  Jitted once per (network shapes, prior, num, ...): models of the same shapes share it.
  """
  graphdef, params = nnx.split(model)
  return np.asarray(_log_weights_jit(graphdef, params, jnp.asarray(labels, jnp.float32),
                                     keys, prior=prior, num=num, estimator=estimator,
                                     smoothing=smoothing), np.float64)


NUM = 20000  # draws per class for the Monte Carlo checks


# ---------------------------------------------------------------------------
# 1. Enumeration: the bound lies below the exact log q(y); the IS estimate is closer.
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model():
  return _model(0, out_scale=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["uniform", "pixel_bernoulli"])
def test_bound_below_exact_log_q_y_and_matches_quadrature(small_model, prior):
  ref = NumpyM2(small_model, ACTIVATION)
  np_log_prior_x = (_np_uniform_log_prior if prior == "uniform"
                    else _np_pixel_log_prior(PIXEL_PROBS))
  exact = _exact_log_q_y(ref, np_log_prior_x)
  # Sanity of the enumeration itself: sum_y q(y) = sum_x q(x) = 1.
  np.testing.assert_allclose(np.sum(np.exp(exact)), 1.0, rtol=1e-10)

  keys = jax.random.split(jax.random.key(10), K)
  all_log_w = _log_weights(small_model, EYE, keys, prior=prior, num=NUM)
  assert all_log_w.shape == (K, NUM)
  for c in range(K):
    y, log_w = EYE[c], all_log_w[c]
    bound, se = log_w.mean(), log_w.std() / np.sqrt(NUM)
    quad = _quadrature_bound(ref, np_log_prior_x, y)
    # The Monte Carlo mean estimates the quadrature value of the expectation ...
    assert abs(bound - quad) < 4.5 * se + 1e-4, (c, bound, quad, se)
    # ... which is a strict lower bound (Jensen) on the enumerated log q(y).
    assert quad < exact[c] - 1e-3, (c, quad, exact[c])
    assert bound < exact[c] + 4.0 * se, (c, bound, exact[c], se)

    # Importance weights are unbiased for q(y): E[w] = q(y).
    w = np.exp(log_w)
    assert abs(w.mean() - np.exp(exact[c])) < 5.0 * w.std() / np.sqrt(NUM), (
        c, w.mean(), np.exp(exact[c]))
    # log-mean-exp: at most log q(y) up to Monte Carlo error, and much closer than the bound.
    is_est = float(np_logsumexp(log_w) - np.log(NUM))
    rel_se = w.std() / (w.mean() * np.sqrt(NUM))
    assert is_est < exact[c] + 4.0 * rel_se, (c, is_est, exact[c], rel_se)
    assert abs(exact[c] - is_est) < 0.25 * (exact[c] - bound), (c, is_est, bound, exact[c])

  if prior != "pixel_bernoulli":
    return
  # likelihood.label_only_bound_and_log_q_y (the reported numbers) is the mean and the
  # log-mean-exp of the same draws.
  b, lq = jax.jit(lambda y, key: likelihood.label_only_bound_and_log_q_y(
      small_model, y, key, log_prior_x=_jax_prior(prior, small_model), num_samples=NUM))(
          jnp.asarray(EYE[1], jnp.float32), keys[1])
  np.testing.assert_allclose(
      [float(b), float(lq)], [all_log_w[1].mean(), np_logsumexp(all_log_w[1]) - np.log(NUM)],
      rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# 2. The gap closes when p(z)p(x|y,z) agrees with q(x,z|y).
# ---------------------------------------------------------------------------

# Three distinct template images, one per class.
TEMPLATES = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]], np.float64)
TEMPLATE_EPS = 1e-3


def _np_template_mixture_log_prior(x):
  """q(x) = (1/K) sum_k prod_d Bernoulli(x_d; clip(template_k,d, eps, 1 - eps))."""
  probs = np.clip(TEMPLATES, TEMPLATE_EPS, 1 - TEMPLATE_EPS)  # [K, D]
  x = np.asarray(x, np.float64)[..., None, :]
  comp = np.sum(x * np.log(probs) + (1 - x) * np.log1p(-probs), -1)  # [..., K]
  return np_logsumexp(comp - np.log(K), -1)


def _template_mixture_log_prior(x, rng=None):
  del rng
  probs = jnp.clip(jnp.asarray(TEMPLATES, jnp.float32), TEMPLATE_EPS, 1 - TEMPLATE_EPS)
  logits = jnp.log(probs) - jnp.log1p(-probs)
  comp = jax.vmap(lambda l: m2.bernoulli_log_prob(x, l))(logits)
  return jax.nn.logsumexp(comp) - jnp.log(K)


def _agreeing_model(*, enc_mean=(0.0, 0.0), enc_log_var=(0.0, 0.0)) -> M2:
  """Hand-set M2 whose p(z)p(x|y,z) is (nearly) q(x,z|y) under the template mixture q(x).

  decoder: ignores z; hidden unit k = tanh(3 y_k), the output logits are
           12 (2 template_y - 1), so x ~ p(x|y,z) is template_y with prob ~ 1 - 2.5e-5.
  classifier: hidden unit d = tanh(x_d - 1/2) = ±tanh(1/2); logit_k =
           10 sum_d (2 template_k,d - 1) h_d, so q(y|template_y) ~ 1 - 1e-8.
  encoder: all weights zero, output bias (enc_mean, enc_log_var): q(z|x,y) is
           N(enc_mean, exp(enc_log_var)) whatever x, y; zero gives q(z|x,y) = p(z).
  q(x): mixture of K near-point masses on the templates, so q(x|y) ~ delta(template_y).
  With enc zero, the gap is KL(p(x|y) || q(x|y)) ~ -log q(template_y|y) ~ 4e-3 nats;
  moving the encoder adds exactly KL(N(0, I) || N(enc_mean, exp(enc_log_var))).
  """
  model = M2(num_pixels=D, num_classes=K, latent_dim=Z, hidden=H, activation=ACTIVATION,
             rngs=nnx.Rngs(0))
  hid = H[0]
  # Decoder.
  l0, l1 = model.decoder.net.layers
  k0 = np.zeros((K + Z, hid), np.float32)
  k0[np.arange(K), np.arange(K)] = 3.0  # rows K.. (the z inputs) stay zero: z is ignored.
  l0.kernel[...] = jnp.asarray(k0)
  l0.bias[...] = jnp.zeros((hid,))
  k1 = np.zeros((hid, D), np.float32)
  k1[:K] = 12.0 * (2 * TEMPLATES - 1) / np.tanh(3.0)
  l1.kernel[...] = jnp.asarray(k1)
  l1.bias[...] = jnp.zeros((D,))
  # Classifier.
  c0, c1 = model.classifier.net.layers
  w0 = np.zeros((D, hid), np.float32)
  w0[np.arange(D), np.arange(D)] = 1.0
  c0.kernel[...] = jnp.asarray(w0)
  b0 = np.zeros((hid,), np.float32)
  b0[:D] = -0.5
  c0.bias[...] = jnp.asarray(b0)
  w1 = np.zeros((hid, K), np.float32)
  w1[:D] = 10.0 * (2 * TEMPLATES.T - 1)
  c1.kernel[...] = jnp.asarray(w1)
  c1.bias[...] = jnp.zeros((K,))
  # Encoder: constant output.
  enc = model.encoder
  enc.from_x.kernel[...] = jnp.zeros_like(enc.from_x.kernel[...])
  enc.from_x.bias[...] = jnp.zeros_like(enc.from_x.bias[...])
  enc.from_y.kernel[...] = jnp.zeros_like(enc.from_y.kernel[...])
  for layer in enc.net.layers:
    layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
    layer.bias[...] = jnp.zeros_like(layer.bias[...])
  enc.net.layers[-1].bias[...] = jnp.asarray(np.concatenate([enc_mean, enc_log_var]),
                                             jnp.float32)
  return model


def _gaps(model, prior, np_log_prior_x, seed=0):
  """(exact log q(y) - Monte Carlo bound, the bounds' standard errors, the bounds): [K] each."""
  exact = _exact_log_q_y(NumpyM2(model, ACTIVATION), np_log_prior_x)
  log_w = _log_weights(model, EYE, jax.random.split(jax.random.key(seed), K), prior=prior,
                       num=NUM)
  means = log_w.mean(1)
  return exact - means, log_w.std(1) / np.sqrt(NUM), means


def _exact_gap_z_free(ref: NumpyM2, np_log_prior_x) -> np.ndarray:
  """KL(p(x|y) || q(x|y)) by enumeration, for a decoder that ignores z and q(z|x,y) = p(z).

  Then the gap log q(y) - bound = KL(p(z)p(x|y) || p(z)q(x|y)) = KL(p(x|y) || q(x|y)),
  q(x|y) = q(x) q(y|x) / q(y): [K].
  """
  joint = np_log_prior_x(ALL_X)[:, None] + ref.log_q_y_given_x(ALL_X)  # [16, K]
  log_q_x_given_y = joint - np_logsumexp(joint, 0)[None]
  out = []
  for c in range(K):
    log_p = np_bernoulli(ALL_X, ref.decoder_logits(EYE[c], np.zeros((1, Z))))  # [16]
    out.append(np.sum(np.exp(log_p) * (log_p - log_q_x_given_y[:, c])))
  return np.array(out)


@pytest.mark.slow
def test_gap_small_when_decoder_classifier_encoder_and_prior_agree():
  agree = _agreeing_model()
  ref = NumpyM2(agree, ACTIVATION)
  # The hand-set networks do what the docstring says.
  np.testing.assert_array_equal(ref.decoder_logits(EYE[1], np.array([[5.0, -3.0]])) > 0,
                                TEMPLATES[1][None] > 0)
  assert np.all(np.exp(np.diag(ref.log_q_y_given_x(TEMPLATES))) > 1 - 1e-6)
  np.testing.assert_allclose(np.exp(np_logsumexp(_np_template_mixture_log_prior(ALL_X),
                                                  0)), 1.0, rtol=1e-9)
  # The JAX prior passed to the bound is the same distribution.
  np.testing.assert_allclose(
      jax.vmap(_template_mixture_log_prior)(jnp.asarray(ALL_X, jnp.float32)),
      _np_template_mixture_log_prior(ALL_X), rtol=1e-5, atol=1e-5)

  gaps, ses, _ = _gaps(agree, "templates", _np_template_mixture_log_prior)
  # ~ 4e-3 nats for every class (see _agreeing_model) ...
  assert np.all(gaps < 0.01), gaps
  # ... and exactly KL(p(x|y) || q(x|y)) by enumeration, z being irrelevant here.
  np.testing.assert_allclose(gaps, _exact_gap_z_free(ref, _np_template_mixture_log_prior),
                             atol=5 * np.max(ses) + 2e-4)

  # Same prior, random networks: the gap is large.
  rand_gaps, _, _ = _gaps(_model(3), "templates", _np_template_mixture_log_prior)
  assert np.all(rand_gaps > 1.0), rand_gaps
  # Same agreeing networks, but q(x) uniform: q(x|y) spreads over every image the
  # classifier gives to y, p(x|y) does not, and the gap opens up.
  unif_gaps, unif_ses, _ = _gaps(agree, "uniform", _np_uniform_log_prior)
  assert np.all(unif_gaps > 0.5), unif_gaps
  np.testing.assert_allclose(unif_gaps, _exact_gap_z_free(ref, _np_uniform_log_prior),
                             atol=5 * np.max(unif_ses) + 2e-4)


@pytest.mark.slow
def test_gap_grows_by_kl_of_encoder_from_prior():
  # With the decoder ignoring z and q(z|x,y) = N(m, diag exp(v)) for every x, y,
  # the gap increases by exactly KL(N(0, I) || N(m, exp(v))) over the agreeing model.
  m, v = np.array([1.0, -0.5]), np.array([0.3, -0.2])
  kl = 0.5 * np.sum((1.0 + m ** 2) / np.exp(v) - 1.0 + v)  # closed form, = 0.80...
  num = NUM
  base_gaps, _, base = _gaps(_agreeing_model(), "templates", _np_template_mixture_log_prior,
                             seed=7)
  shifted_gaps, _, shifted = _gaps(_agreeing_model(enc_mean=m, enc_log_var=v), "templates",
                                   _np_template_mixture_log_prior, seed=7)
  # Same keys, so the same (z, x) draws: the per-draw difference is
  # log N(z; m, e^v) - log N(z; 0, I), whose std is below 2 for these m, v.
  np.testing.assert_allclose(base - shifted, kl, atol=5 * 2.0 / np.sqrt(num))
  np.testing.assert_allclose(shifted_gaps - base_gaps, kl, atol=5 * 2.0 / np.sqrt(num))


# ---------------------------------------------------------------------------
# 3. One draw's integrand, term by term, in NumPy.
# ---------------------------------------------------------------------------

def _replicate_draws(model, y, draw_keys):
  """(z [S, Z], x [S, D], prior_key per draw) as label_only_log_weights draws them.

  draw_keys are split(rng, num_samples) (or its first few); each is split into
  (z_key, x_key, prior_key), z = normal(z_key), x = bernoulli(x_key, sigmoid(logits)).
  """
  ref = NumpyM2(model, ACTIVATION)
  zs, xs, prior_keys = [], [], []
  for key in draw_keys:
    z_key, x_key, prior_key = jax.random.split(key, 3)
    z = np.asarray(jax.random.normal(z_key, (Z,)), np.float64)
    probs = 1.0 / (1.0 + np.exp(-ref.decoder_logits(y, z)))
    x = np.asarray(jax.random.bernoulli(x_key, jnp.asarray(probs, jnp.float32)), np.float64)
    zs.append(z), xs.append(x), prior_keys.append(prior_key)
  return np.array(zs), np.array(xs), prior_keys


def _np_integrand(ref: NumpyM2, y, z, x, log_qx, smoothing=1.0) -> float:
  """log q(x) + log q(y|x) + log q(z|x,y) - log p(z) - log p(x|y,z), scipy densities."""
  target = np.where(y == 1, smoothing, (1 - smoothing) / (K - 1))
  log_qy = np.sum(target * ref.log_q_y_given_x(x))
  mean, log_var = ref.encode(x, y)
  log_qz = np.sum(stats.norm.logpdf(z, mean, np.exp(0.5 * log_var)))
  log_pz = np.sum(stats.norm.logpdf(z))
  p = 1.0 / (1.0 + np.exp(-ref.decoder_logits(y, z)))
  log_px = np.sum(stats.bernoulli.logpmf(x, p))
  return log_qx + log_qy + log_qz - log_pz - log_px


@pytest.mark.slow
@pytest.mark.parametrize("prior,smoothing", [("pixel_bernoulli", 1.0), ("uniform", 1.0),
                                             ("model", 0.8)])
def test_integrand_term_by_term(small_model, prior, smoothing):
  ref = NumpyM2(small_model, ACTIVATION)
  c, num = 2, 6
  y = EYE[c]
  # The enumeration test's call (a jit-cache hit for two of the priors); check the
  # first `num` of class c's draws.
  keys = jax.random.split(jax.random.key(10), K)
  log_w = _log_weights(small_model, EYE, keys, prior=prior, num=NUM,
                       smoothing=smoothing)[c, :num]

  zs, xs, prior_keys = _replicate_draws(small_model, y, jax.random.split(keys[c], NUM)[:num])
  assert len({tuple(x) for x in xs}) > 1  # the draws differ
  for s in range(num):
    z, x = zs[s], xs[s]
    if prior == "uniform":
      log_qx = -D * np.log(2.0)
    elif prior == "pixel_bernoulli":
      log_qx = np.sum(stats.bernoulli.logpmf(x, PIXEL_PROBS.astype(np.float64)))
    else:
      # U(x) with one eps per class, drawn from split(prior_key, K) as m2 does.
      eps = np.stack([np.asarray(jax.random.normal(k, (1, Z)), np.float64)
                      for k in jax.random.split(prior_keys[s], K)])
      log_qx = ref.unlabeled_bound(x, eps)
    np.testing.assert_allclose(log_w[s], _np_integrand(ref, y, z, x, log_qx, smoothing),
                               rtol=2e-5, atol=2e-4, err_msg=str(s))


# ---------------------------------------------------------------------------
# 4. Estimators of x.
# ---------------------------------------------------------------------------

LOGITS = jnp.asarray(np.random.RandomState(0).randn(2000) * 2.0, jnp.float32)
COEF = jnp.asarray(np.random.RandomState(1).randn(2000), jnp.float32)
GRID_VALUES = np.array([-2.0, -0.5, 0.7, 2.5])


def _sigmoid_np(a):
  return 1.0 / (1.0 + np.exp(-np.asarray(a, np.float64)))


def test_mean_estimator_is_sigmoid_with_its_derivative():
  key = jax.random.key(0)
  x = untapped.sample_x(LOGITS, key, estimator="mean")
  p = _sigmoid_np(LOGITS)
  np.testing.assert_allclose(x, p, rtol=1e-6, atol=1e-7)
  g = jax.grad(lambda l: jnp.sum(COEF * untapped.sample_x(l, key, estimator="mean")))(LOGITS)
  np.testing.assert_allclose(g, np.asarray(COEF) * p * (1 - p), rtol=1e-5, atol=1e-7)


def test_straight_through_binary_forward_sigmoid_backward():
  key = jax.random.key(1)
  x = np.asarray(untapped.sample_x(LOGITS, key, estimator="straight_through"), np.float64)
  # Binary forward value (hard + p - p may be off by one float32 ulp).
  np.testing.assert_allclose(x, np.round(x), atol=1e-6)
  assert set(np.unique(np.round(x))) == {0.0, 1.0}
  # Bernoulli(sigmoid(logits)): the mean of x - p is ~ 0 (2000 pixels, var <= 1/4 each).
  p = _sigmoid_np(LOGITS)
  assert abs(np.mean(np.round(x) - p)) < 4 * 0.5 / np.sqrt(len(p))
  # Same hard sample as 'exact' for the same key.
  hard = np.asarray(untapped.sample_x(LOGITS, key, estimator="exact"))
  np.testing.assert_array_equal(np.round(x), hard)
  g = jax.grad(lambda l: jnp.sum(
      COEF * untapped.sample_x(l, key, estimator="straight_through")))(LOGITS)
  np.testing.assert_allclose(g, np.asarray(COEF) * p * (1 - p), rtol=1e-5, atol=1e-7)


def test_relaxed_in_unit_interval_gradient_and_zero_temperature_limit():
  key = jax.random.key(2)
  fractions_soft = []
  for temperature in (1.0, 0.3, 0.05, 0.01):
    x = np.asarray(untapped.sample_x(LOGITS, key, estimator="relaxed",
                                     temperature=temperature), np.float64)
    assert np.all((x >= 0) & (x <= 1))
    if temperature == 1.0:  # float32 sigmoid saturates only at |logit + noise| > ~17
      assert np.mean((x > 0) & (x < 1)) > 0.99
    fractions_soft.append(np.mean((x > 0.01) & (x < 0.99)))
    # Binary Concrete: P(x > 1/2) = sigmoid(logits) at every temperature; checked per
    # logit value (pooled over signs, errors in either direction could cancel).
    grid = np.repeat(GRID_VALUES, 1000)
    xg = np.asarray(untapped.sample_x(jnp.asarray(grid, jnp.float32), key, estimator="relaxed",
                                      temperature=temperature)).reshape(len(GRID_VALUES), -1)
    pg = _sigmoid_np(GRID_VALUES)
    np.testing.assert_allclose(np.mean(xg > 0.5, 1), pg,
                               atol=4 * np.sqrt(np.max(pg * (1 - pg)) / 1000))
    # d x / d logits = x (1 - x) / temperature (closed form of the Concrete sample).
    g = jax.grad(lambda l: jnp.sum(COEF * untapped.sample_x(
        l, key, estimator="relaxed", temperature=temperature)))(LOGITS)
    np.testing.assert_allclose(g, np.asarray(COEF) * x * (1 - x) / temperature,
                               rtol=2e-3, atol=1e-5)
  # Samples harden as the temperature goes to 0.
  assert fractions_soft == sorted(fractions_soft, reverse=True), fractions_soft
  assert fractions_soft[0] > 0.5 and fractions_soft[-1] < 0.05, fractions_soft


def test_exact_estimator_has_zero_gradient_and_unknown_raises():
  key = jax.random.key(3)
  g = jax.grad(lambda l: jnp.sum(COEF * untapped.sample_x(l, key, estimator="exact")))(LOGITS)
  np.testing.assert_array_equal(g, np.zeros_like(g))
  with pytest.raises(ValueError, match="gumbel_softmax"):
    untapped.sample_x(LOGITS, key, estimator="gumbel_softmax")
  y = jnp.asarray(EYE[0], jnp.float32)
  with pytest.raises(ValueError, match="gumbel_softmax"):
    untapped.label_only_bound(_model(0), y, key, log_prior_x=untapped.uniform_log_prior,
                              estimator="gumbel_softmax")


def test_straight_through_surrogate_value_equals_exact_bound(small_model):
  # Same keys as the enumeration test (its 'exact' draws are reused from the jit cache).
  keys = jax.random.split(jax.random.key(10), K)
  st = _log_weights(small_model, EYE, keys, prior="pixel_bernoulli", num=NUM,
                    estimator="straight_through")
  exact = _log_weights(small_model, EYE, keys, prior="pixel_bernoulli", num=NUM)
  # hard + p - stop_gradient(p) can be one float32 ulp off the hard sample.
  np.testing.assert_allclose(st, exact, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(st.mean(1), exact.mean(1), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# 5. Helpers: smooth_labels, gaussian_log_prob, priors, fit_pixel_bernoulli.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("k,smoothing", [(3, 0.9), (10, 0.8), (2, 0.6)])
def test_smooth_labels(k, smoothing):
  for c in range(k):
    y = np.eye(k, dtype=np.float32)[c]
    s = np.asarray(untapped.smooth_labels(jnp.asarray(y), smoothing), np.float64)
    np.testing.assert_allclose(s.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(s[c], smoothing, rtol=1e-6)
    np.testing.assert_allclose(np.delete(s, c), (1 - smoothing) / (k - 1), rtol=1e-6)
  y = jnp.asarray(np.eye(k, dtype=np.float32)[0])
  np.testing.assert_array_equal(untapped.smooth_labels(y, 1.0), y)


def test_gaussian_log_prob_against_scipy():
  rs = np.random.RandomState(0)
  for dim in (1, 2, 7):
    z, mean, log_var = rs.randn(dim), rs.randn(dim), rs.randn(dim)
    expected = np.sum(stats.norm.logpdf(z, mean, np.exp(0.5 * log_var)))
    got = untapped.gaussian_log_prob(jnp.asarray(z, jnp.float32),
                                     jnp.asarray(mean, jnp.float32),
                                     jnp.asarray(log_var, jnp.float32))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-5)


def test_image_priors_against_scipy():
  rs = np.random.RandomState(0)
  probs = rs.uniform(0.05, 0.95, size=9).astype(np.float32)
  prior = untapped.pixel_bernoulli_log_prior(jnp.asarray(probs))
  images = np.array(list(itertools.product([0.0, 1.0], repeat=9)))[::37]
  log_q = jax.vmap(prior)(jnp.asarray(images, jnp.float32))
  expected = np.sum(stats.bernoulli.logpmf(images, probs.astype(np.float64)), -1)
  np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-5)
  # pixel_bernoulli over all 2^D images sums to 1; so does the uniform prior.
  small = untapped.pixel_bernoulli_log_prior(jnp.asarray(PIXEL_PROBS))
  total = np.sum(np.exp(np.asarray(jax.vmap(small)(jnp.asarray(ALL_X, jnp.float32)),
                                   np.float64)))
  np.testing.assert_allclose(total, 1.0, rtol=1e-5)
  u = jax.vmap(untapped.uniform_log_prior)(jnp.asarray(ALL_X, jnp.float32))
  np.testing.assert_allclose(u, -D * np.log(2.0), rtol=1e-6)
  g = jax.grad(lambda x: untapped.uniform_log_prior(x))(jnp.asarray(PIXEL_PROBS))
  np.testing.assert_array_equal(g, np.zeros(D))


def test_fit_pixel_bernoulli_mean_and_clipping():
  rs = np.random.RandomState(0)
  images = rs.randint(0, 256, size=(50, 8)).astype(np.uint8)
  images[:, 0] = 0  # never on
  images[:, 1] = 255  # always on
  images[:, 2] = 1  # mean 1/255 ~ 0.0039 > eps: not clipped
  probs = untapped.fit_pixel_bernoulli(images, eps=1e-3)
  assert probs.dtype == np.float32 and probs.shape == (8,)
  manual = np.array([sum(int(v) for v in images[:, d]) / (50 * 255.0) for d in range(8)])
  np.testing.assert_allclose(probs[2:], manual[2:], rtol=1e-6)
  np.testing.assert_allclose(probs[:2], [1e-3, 1 - 1e-3], rtol=1e-6)
  probs = untapped.fit_pixel_bernoulli(images, eps=0.1)
  np.testing.assert_allclose(probs, np.clip(manual, 0.1, 0.9), rtol=1e-6)
  assert np.all(np.isfinite(np.asarray(untapped.pixel_bernoulli_log_prior(
      jnp.asarray(untapped.fit_pixel_bernoulli(images)))(jnp.ones(8)))))


# ---------------------------------------------------------------------------
# 6. The objective: lambda = 0 is M2 exactly; lambda > 0 adds lambda * mean(B).
# ---------------------------------------------------------------------------

def _batch(seed=0, nl=5, nu=4, nlo=6):
  rs = np.random.RandomState(seed)
  f = lambda *s: jnp.asarray(rs.randint(0, 2, size=s), jnp.float32)
  return {"labeled": {"x": f(nl, D), "y": jnp.asarray(np.eye(K)[rs.randint(0, K, nl)],
                                                      jnp.float32)},
          "unlabeled": {"x": f(nu, D)},
          "label_only": {"y": jnp.asarray(np.eye(K)[rs.randint(0, K, nlo)], jnp.float32)}}


@pytest.mark.slow
def test_lambda_zero_is_m2_exactly_and_lambda_adds_label_only_mean():
  model = _model(1)
  graphdef, params = nnx.split(model)
  batch, rng = _batch(), jax.random.key(11)
  sizes = dict(num_labeled=5, num_unlabeled=4, num_label_only=6, classification_weight=0.1)
  w0 = objective.StreamWeights.from_sizes(label_only_weight=0.0, **sizes)
  w1 = objective.StreamWeights.from_sizes(label_only_weight=0.7, **sizes)
  settings = objective.LabelOnlySettings(pixel_probs=PIXEL_PROBS, num_samples=3)

  m2_rng, label_only_rng = jax.random.split(rng)  # as loss_fn splits it

  @jax.jit
  def run(params):
    # One jit for all four (compile time dominates on CPU). Common subexpressions
    # may be shared, but any difference in the computation (another rng split, an
    # extra term) would survive it; the skipped stream shows up in the metrics.
    def fn(weights, label_only):
      return objective.make_loss_fn(graphdef, weights, num_samples=2, label_only=label_only)
    model = nnx.merge(graphdef, params)
    terms = objective.label_only_terms(
        model, batch["label_only"]["y"], label_only_rng, settings=settings,
        log_prior_x=untapped.pixel_bernoulli_log_prior(jnp.asarray(PIXEL_PROBS)))
    return (jax.value_and_grad(fn(w0, None), has_aux=True)(params, batch, rng),
            jax.value_and_grad(fn(w0, settings), has_aux=True)(params, batch, rng),
            fn(w1, settings)(params, batch, rng), terms)

  ((loss_m2, met_m2), g_m2), ((loss_0, met_0), g_0), (loss_1, met_1), terms = run(params)
  np.testing.assert_array_equal(loss_0, loss_m2)
  for a, b in zip(jax.tree.leaves(g_0), jax.tree.leaves(g_m2)):
    np.testing.assert_array_equal(a, b)
  # Without settings the stream is skipped; with lambda = 0 it is computed and weighs nothing.
  assert "label_only_estimate" not in met_m2
  assert "label_only_estimate" in met_0 and "label_only_estimate" in met_1
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(g_m2))

  # The M2 part against NumPy: -(w_l mean(L + alpha log q) + w_u mean(U)).
  ref = NumpyM2(model, ACTIVATION)
  rng_l, rng_u = jax.random.split(m2_rng)
  xl, yl = np.asarray(batch["labeled"]["x"]), np.asarray(batch["labeled"]["y"])
  xu = np.asarray(batch["unlabeled"]["x"])
  elbos = [ref.labeled_elbo(x, y, np.asarray(jax.random.normal(k, (2, Z)), np.float64))
           for x, y, k in zip(xl, yl, jax.random.split(rng_l, len(xl)))]
  log_q = [np.sum(y * ref.log_q_y_given_x(x)) for x, y in zip(xl, yl)]
  ubs = [ref.unlabeled_bound(x, np.stack([np.asarray(jax.random.normal(kk, (2, Z)))
                                          for kk in jax.random.split(k, K)]))
         for x, k in zip(xu, jax.random.split(rng_u, len(xu)))]
  expected_m2 = -(w0.labeled * np.mean(np.array(elbos) + w0.classification * np.array(log_q))
                  + w0.unlabeled * np.mean(ubs))
  np.testing.assert_allclose(float(loss_m2), expected_m2, rtol=1e-5)

  # lambda > 0: the loss drops by weights.label_only * mean(label-only terms).
  assert terms.shape == (6,) and len(set(np.asarray(terms).tolist())) == 6
  # Each term is the mean of its 3 straight-through draws (forward = hard samples), with
  # keys split(label_only_rng, 6)[b], recomputed in NumPy.
  for b, (y, key) in enumerate(zip(np.asarray(batch["label_only"]["y"], np.float64),
                                   jax.random.split(label_only_rng, 6))):
    zs, xs, _ = _replicate_draws(model, y, jax.random.split(key, 3))
    expected = np.mean([_np_integrand(ref, y, z, x, np.sum(stats.bernoulli.logpmf(
        x, PIXEL_PROBS.astype(np.float64)))) for z, x in zip(zs, xs)])
    np.testing.assert_allclose(float(terms[b]), expected, rtol=2e-5, atol=2e-4)
  np.testing.assert_allclose(float(loss_1) - float(loss_m2),
                             -w1.label_only * float(jnp.mean(terms)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(met_1["label_only_estimate"]), float(jnp.mean(terms)),
                             rtol=1e-5)
  for name in ("labeled_elbo", "log_q_y", "unlabeled_bound"):  # same M2 draws
    np.testing.assert_allclose(met_1[name], met_m2[name], rtol=1e-6)


# ---------------------------------------------------------------------------
# 7. The 'model' image prior and its stop-gradient.
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_model_prior_stop_gradient_equals_frozen_copy():
  model = _model(2)
  graphdef, params = nnx.split(model)
  y = jnp.asarray(np.eye(K)[[0, 2, 1]], jnp.float32)
  rng = jax.random.key(21)
  sg = objective.LabelOnlySettings(image_prior="model", prior_stop_gradient=True,
                                   num_samples=4)  # straight-through x
  no_sg = dataclasses.replace(sg, prior_stop_gradient=False)
  frozen = jax.tree.map(np.asarray, params)  # concrete arrays: constants under grad

  def objective_fn(p, settings):
    return jnp.mean(objective.label_only_terms(
        nnx.merge(graphdef, p), y, rng, settings=settings,
        log_prior_x=settings.log_prior_x(graphdef, p)))

  def frozen_fn(p):
    prior = untapped.model_log_prior(nnx.merge(graphdef, jax.tree.map(jnp.asarray, frozen)))
    return jnp.mean(objective.label_only_terms(nnx.merge(graphdef, p), y, rng,
                                               settings=sg, log_prior_x=prior))

  def prior_term(p):
    """mean over labels and draws of U_p(x) at the drawn x held fixed.

    The draws are replicated with the code's key splitting (rng -> per label -> per
    draw -> (z, x, prior) keys). Without stop-gradient the objective is
    A(p) + U_p(x_p); with it, A(p) + U_const(x_p): the gradients differ by exactly
    dU_p(x)/dp at fixed x (the path through straight-through x is in both).
    """
    m = nnx.merge(graphdef, p)

    def one_draw(label, key):
      z_key, x_key, prior_key = jax.random.split(key, 3)
      z = jax.random.normal(z_key, (Z,))
      probs = jax.nn.sigmoid(m.decoder(label, z))
      x = jax.lax.stop_gradient(jax.random.bernoulli(x_key, probs).astype(jnp.float32))
      return m2.unlabeled_bound(m, x, prior_key)

    per_label = jax.vmap(lambda label, key: jnp.mean(jax.vmap(
        lambda k: one_draw(label, k))(jax.random.split(key, sg.num_samples))))
    return jnp.mean(per_label(y, jax.random.split(rng, len(y))))

  @jax.jit
  def everything(p):
    return (jax.value_and_grad(lambda q: objective_fn(q, sg))(p),
            jax.value_and_grad(lambda q: objective_fn(q, no_sg))(p),
            jax.value_and_grad(frozen_fn)(p), jax.grad(prior_term)(p))

  (v_sg, g_sg), (v_no, g_no), (v_fr, g_fr), g_prior = everything(params)
  # Same value whatever the gradient path.
  np.testing.assert_allclose([float(v_sg), float(v_no)], float(v_fr), rtol=1e-6)
  # Stop-gradient == a frozen copy of the parameters in the prior.
  for a, b in zip(jax.tree.leaves(g_sg), jax.tree.leaves(g_fr)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Without it, the prior's own parameter gradient is added, and it is not small.
  diffs = [float(jnp.max(jnp.abs(a - b)))
           for a, b in zip(jax.tree.leaves(g_sg), jax.tree.leaves(g_no))]
  assert max(diffs) > 1e-2, diffs
  for a, b, c in zip(jax.tree.leaves(g_no), jax.tree.leaves(g_sg), jax.tree.leaves(g_prior)):
    np.testing.assert_allclose(a - b, c, rtol=1e-4, atol=1e-5)
