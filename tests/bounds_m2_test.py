"""Numeric tests of the M2 bounds (untapped_jax.bounds.m2).

Every quantity is checked against an independent computation: NumPy
re-implementations of the networks built from the raw weight arrays, closed
forms, brute-force enumeration of all binary images, Gauss-Hermite quadrature,
importance sampling and central finite differences.  Nothing is compared with
the code's own output except where the property itself is a self-consistency
(vmap == loop, jit == eager).
"""

from __future__ import annotations

import itertools

from flax import nnx
import jax
import jax.numpy as jnp
from jax import test_util as jtu
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from untapped_jax.bounds import m2
from untapped_jax.models import M2

# The independent NumPy (float64) reference, built from the raw weight arrays.
from numpy_reference import NumpyM2
from numpy_reference import np_bernoulli
from numpy_reference import np_log_normal
from numpy_reference import np_logsumexp
from tiny_models import tiny_m2

D, K, Z, H = 6, 3, 2, (5,)
ACTIVATION = "softplus"

# All 2^D binary images, [64, D].
ALL_X = np.array(list(itertools.product([0.0, 1.0], repeat=D)))


def _enable_x64():
  """Context manager turning on float64 (jax.enable_x64 or the older experimental one)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _perturbed_model(seed: int = 0, scale: float = 1.0) -> M2:
  """Tiny M2 whose biases are non-zero (default init has zero biases) and kernels scaled."""
  return tiny_m2(seed, num_pixels=D, num_classes=K, latent_dim=Z, hidden=H,
                 activation=ACTIVATION, bias_seed=100 + seed, kernel_scale=scale)


@pytest.fixture(scope="module")
def model():
  return _perturbed_model(0)


@pytest.fixture(scope="module")
def ref(model):
  return NumpyM2(model, ACTIVATION)


def _x_batch(n, seed=0):
  return np.random.RandomState(seed).randint(0, 2, size=(n, D)).astype(np.float32)


# ---------------------------------------------------------------------------
# 1. bernoulli_log_prob, gaussian_kl
# ---------------------------------------------------------------------------

def test_bernoulli_log_prob_matches_numpy():
  rs = np.random.RandomState(1)
  for _ in range(5):
    logits = rs.randn(D) * 3
    for x in (rs.randint(0, 2, D).astype(np.float64), rs.rand(D)):  # binary and grey
      p = 1.0 / (1.0 + np.exp(-logits))
      want = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p))
      got = m2.bernoulli_log_prob(jnp.asarray(x, jnp.float32), jnp.asarray(logits, jnp.float32))
      assert got.shape == ()
      np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-5)


def test_bernoulli_log_prob_is_normalised_over_binary_images():
  rs = np.random.RandomState(2)
  for _ in range(3):
    logits = jnp.asarray(rs.randn(D) * 2, jnp.float32)
    lp = jax.vmap(m2.bernoulli_log_prob, (0, None))(jnp.asarray(ALL_X, jnp.float32), logits)
    np.testing.assert_allclose(float(jax.nn.logsumexp(lp)), 0.0, atol=1e-5)


def test_bernoulli_log_prob_saturated_logits():
  x = jnp.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
  # right, right, wrong, wrong, right, wrong
  logits = jnp.array([100.0, -100.0, -100.0, 100.0, 100.0, 100.0])
  got = m2.bernoulli_log_prob(x, logits)
  assert np.isfinite(float(got))
  # Each right pixel costs log(1 + e^-100) ~ 4e-44, each wrong one 100 + that.
  np.testing.assert_allclose(float(got), -300.0, rtol=1e-6)
  right = m2.bernoulli_log_prob(x, jnp.where(x > 0, 100.0, -100.0))
  assert float(right) == pytest.approx(0.0, abs=1e-6)
  one_wrong = m2.bernoulli_log_prob(jnp.array([1.0]), jnp.array([-100.0]))
  np.testing.assert_allclose(float(one_wrong), -100.0, rtol=1e-7)
  # Gradient wrt logits is x - sigmoid(l): finite and exactly 0 / +-1 here.
  g = jax.grad(m2.bernoulli_log_prob, argnums=1)(x, logits)
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(np.asarray(g), [0, 0, 1, -1, 0, -1], atol=1e-6)
  # Larger still: float32 must not overflow to inf / nan.
  big = m2.bernoulli_log_prob(x, 1e4 * jnp.where(x > 0, -1.0, 1.0))
  np.testing.assert_allclose(float(big), -6e4, rtol=1e-6)


def test_bernoulli_log_prob_matches_float64_at_extreme_logits():
  # Both signs, zero, the float32 overflow range of exp, and tiny magnitudes.
  rng = np.random.default_rng(0)
  pool = np.concatenate([np.linspace(-30, 30, 601),
                         [-200.0, -88.0, -1e-7, 0.0, 1e-7, 88.0, 200.0]])
  logits = rng.choice(pool, 784).astype(np.float32)
  x = (rng.random(784) < 0.5).astype(np.float32)
  l64 = logits.astype(np.float64)
  expected = np.sum(x * -np.logaddexp(0, -l64) + (1 - x) * -np.logaddexp(0, l64))
  got = float(jax.jit(m2.bernoulli_log_prob)(x, logits))
  assert abs(got - expected) <= 1e-5 * abs(expected)
  grad = jax.grad(m2.bernoulli_log_prob, argnums=1)(x, logits)
  np.testing.assert_allclose(grad, x - 1 / (1 + np.exp(-l64)), rtol=1e-5, atol=1e-7)


def test_gaussian_kl_matches_closed_form():
  rs = np.random.RandomState(3)
  for _ in range(5):
    mean, log_var = rs.randn(Z + 3), rs.randn(Z + 3)
    var = np.exp(log_var)
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2, summed over dims.
    want = np.sum(-0.5 * log_var + 0.5 * (var + mean ** 2) - 0.5)
    got = m2.gaussian_kl(jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32))
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
  assert float(m2.gaussian_kl(jnp.zeros(4), jnp.zeros(4))) == pytest.approx(0.0, abs=1e-7)
  # Only the mean differs: KL = |m|^2 / 2.
  assert float(m2.gaussian_kl(jnp.array([3.0, 4.0]), jnp.zeros(2))) == pytest.approx(12.5)


def test_gaussian_kl_matches_monte_carlo():
  rs = np.random.RandomState(4)
  mean, log_var = np.array([0.7, -1.2, 0.1]), np.array([-0.5, 0.4, -1.0])
  n = 400_000
  z = mean + np.exp(0.5 * log_var) * rs.randn(n, 3)
  terms = np_log_normal(z, mean, log_var) - np_log_normal(z, np.zeros(3), np.zeros(3))
  mc, se = terms.mean(), terms.std() / np.sqrt(n)
  got = float(m2.gaussian_kl(jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32)))
  assert abs(got - mc) < 5 * se + 1e-4, (got, mc, se)


def test_gaussian_kl_extreme_values_are_finite():
  got = m2.gaussian_kl(jnp.array([50.0, 0.0]), jnp.array([-30.0, 10.0]))
  want = 0.5 * (2500.0 + np.exp(-30.0) - 1 + 30.0) + 0.5 * (np.exp(10.0) - 1 - 10.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


# ---------------------------------------------------------------------------
# 2-3. labeled_elbo_given_noise / labeled_elbo / unlabeled_bound vs NumPy loops
# ---------------------------------------------------------------------------

def test_labeled_elbo_given_noise_matches_numpy(model, ref):
  rs = np.random.RandomState(5)
  xs = _x_batch(4, seed=5)
  for i, x in enumerate(xs):
    y = np.eye(K)[i % K]
    eps = rs.randn(4, Z)  # S = 4
    got = m2.labeled_elbo_given_noise(model, jnp.asarray(x), jnp.asarray(y, jnp.float32),
                                      jnp.asarray(eps, jnp.float32))
    assert got.shape == ()
    np.testing.assert_allclose(float(got), ref.labeled_elbo(x, y, eps), rtol=1e-5, atol=1e-4)


def test_labeled_elbo_given_noise_single_sample_and_grey_pixels(model, ref):
  rs = np.random.RandomState(6)
  x = rs.rand(D)  # non-binary x in [0, 1]
  y = np.eye(K)[2]
  eps = rs.randn(1, Z)
  got = m2.labeled_elbo_given_noise(model, jnp.asarray(x, jnp.float32),
                                    jnp.asarray(y, jnp.float32), jnp.asarray(eps, jnp.float32))
  np.testing.assert_allclose(float(got), ref.labeled_elbo(x, y, eps), rtol=1e-5, atol=1e-4)


def test_labeled_elbo_draws_standard_normal_noise_from_rng(model, ref):
  x, y = _x_batch(1, seed=7)[0], np.eye(K)[1]
  rng = jax.random.key(7)
  eps = np.asarray(jax.random.normal(rng, (3, Z)), np.float64)
  got = m2.labeled_elbo(model, jnp.asarray(x), jnp.asarray(y, jnp.float32), rng, num_samples=3)
  np.testing.assert_allclose(float(got), ref.labeled_elbo(x, y, eps), rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("num_samples", [1, 3])
def test_unlabeled_bound_matches_numpy_sum_over_labels(model, ref, num_samples):
  xs = _x_batch(3, seed=8)
  for i, x in enumerate(xs):
    rng = jax.random.key(100 + i)
    keys = jax.random.split(rng, K)
    eps = [np.asarray(jax.random.normal(keys[k], (num_samples, Z)), np.float64)
           for k in range(K)]
    got = m2.unlabeled_bound(model, jnp.asarray(x), rng, num_samples=num_samples)
    assert got.shape == ()
    np.testing.assert_allclose(float(got), ref.unlabeled_bound(x, eps), rtol=1e-5, atol=1e-4)


def test_classification_log_prob_matches_numpy_log_softmax(model, ref):
  rs = np.random.RandomState(9)
  xs = np.concatenate([_x_batch(3, seed=9), rs.rand(2, D)])
  for x in xs:
    log_q = ref.log_q_y_given_x(x)
    np.testing.assert_allclose(np.exp(log_q).sum(), 1.0, rtol=1e-12)
    for k in range(K):
      got = m2.classification_log_prob(model, jnp.asarray(x, jnp.float32),
                                       jnp.eye(K, dtype=jnp.float32)[k])
      np.testing.assert_allclose(float(got), log_q[k], rtol=1e-5, atol=1e-5)
    soft = rs.dirichlet(np.ones(K))
    got = m2.classification_log_prob(model, jnp.asarray(x, jnp.float32),
                                     jnp.asarray(soft, jnp.float32))
    np.testing.assert_allclose(float(got), soft @ log_q, rtol=1e-5, atol=1e-5)


def test_log_prior_y_is_uniform():
  for k in range(K):
    np.testing.assert_allclose(float(m2.log_prior_y(jnp.eye(K)[k])), -np.log(K), rtol=1e-6)
  np.testing.assert_allclose(float(m2.log_prior_y(jnp.eye(10)[4])), -np.log(10), rtol=1e-6)


# ---------------------------------------------------------------------------
# 4. The bounds against the true log-likelihood (IS, quadrature, closed form)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def true_log_p(ref):
  """log p(x|y) for all 64 binary x and K labels: by IS (20000 draws) and by quadrature,
  checked against each other and for normalisation before any test relies on them."""
  rs = np.random.RandomState(10)
  is_est = np.array([[ref.log_px_given_y_is(x, np.eye(K)[k], 20_000, rs) for k in range(K)]
                     for x in ALL_X])
  quad = np.array([[ref.log_px_given_y_quadrature(x, np.eye(K)[k]) for k in range(K)]
                   for x in ALL_X])
  np.testing.assert_allclose(is_est, quad, atol=3e-2)
  # Per label, sum_x p(x|y) = 1.
  np.testing.assert_allclose(np.exp(is_est).sum(0), np.ones(K), atol=5e-3)
  np.testing.assert_allclose(np.exp(quad).sum(0), np.ones(K), atol=1e-6)
  return is_est, quad


def _mean_bounds(model, num_rngs, seed=11):
  """E over rngs of labeled_elbo(x, y) [64, K] and unlabeled_bound(x) [64], with std errors."""
  keys = jax.random.split(jax.random.key(seed), num_rngs)
  xs = jnp.asarray(ALL_X, jnp.float32)
  labels = jnp.eye(K, dtype=jnp.float32)

  @jax.jit
  def run(keys):
    per_key = lambda key: (
        jax.vmap(lambda x: jax.vmap(lambda y: m2.labeled_elbo(model, x, y, key))(labels))(xs),
        jax.vmap(lambda x: m2.unlabeled_bound(model, x, key))(xs))
    return jax.vmap(per_key)(keys)

  elbo, bound = (np.asarray(a, np.float64) for a in run(keys))
  se = lambda a: a.std(0) / np.sqrt(num_rngs)
  return elbo.mean(0), se(elbo), bound.mean(0), se(bound)


def test_bounds_are_below_log_likelihood_and_not_absurdly_loose(model, ref, true_log_p):
  log_px_y, quad = true_log_p
  log_pxy = log_px_y + np.log(1.0 / K)  # log p(x, y) [64, K]
  log_px = np_logsumexp(log_pxy, axis=1)  # [64]
  elbo, elbo_se, bound, bound_se = _mean_bounds(model, num_rngs=2000)
  is_tol = 3e-2  # IS vs quadrature agreement asserted above

  # E[L(x, y)] <= log p(x, y), with a gap that is KL(q(z|x,y) || p(z|x,y)).
  assert np.all(elbo <= log_pxy + 4 * elbo_se + is_tol), np.max(elbo - log_pxy)
  gap_xy = log_pxy - elbo
  assert np.all(gap_xy < 4.5), gap_xy.max()
  assert gap_xy.mean() > 0.01  # random networks: q(z|x,y) is not the posterior

  # E[U(x)] <= log p(x) - KL(q(y|x) || p(y|x)) <= log p(x).
  log_q = np.stack([ref.log_q_y_given_x(x) for x in ALL_X])
  log_post = log_pxy - log_px[:, None]
  kl_y = np.sum(np.exp(log_q) * (log_q - log_post), 1)
  assert np.all(kl_y >= -1e-9)
  assert np.all(bound <= log_px - kl_y + 4 * bound_se + is_tol), np.max(bound - log_px + kl_y)
  assert np.all(bound <= log_px + 4 * bound_se + is_tol)
  gap_x = log_px - bound
  assert np.all(gap_x < 4.5), gap_x.max()
  # The bound is a sum over labels of the labeled bounds: the gaps add up exactly.
  q = np.exp(log_q)
  np.testing.assert_allclose(gap_x, kl_y + np.sum(q * gap_xy, 1),
                             atol=4 * bound_se.max() + 4 * elbo_se.max() + 2 * is_tol)
  # quadrature is the precise reference: same checks without the IS slack
  log_pxy_quad = quad + np.log(1.0 / K)
  assert np.all(elbo <= log_pxy_quad + 4 * elbo_se + 1e-4)

  # The expectations themselves, by Gauss-Hermite quadrature over q(z|x,y):
  # E[L(x,y)] = E_q[log p(x|y,z)] + log p(y) - KL(q || p(z)),
  # E[U(x)] = sum_y q(y|x) E[L(x,y)] + H[q(y|x)].
  nodes, weights = np.polynomial.hermite_e.hermegauss(30)
  u = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
  w = np.outer(weights, weights).reshape(-1) / (2 * np.pi)
  expected_elbo = np.zeros((len(ALL_X), K))
  for i, x in enumerate(ALL_X):
    for k in range(K):
      y = np.eye(K)[k]
      mean, log_var = ref.encode(x, y)
      z = mean + np.exp(0.5 * log_var) * u
      kl = 0.5 * np.sum(mean ** 2 + np.exp(log_var) - 1.0 - log_var)
      expected_elbo[i, k] = w @ np_bernoulli(x, ref.decoder_logits(y, z)) - np.log(K) - kl
  assert np.all(np.abs(elbo - expected_elbo) < 4.5 * elbo_se + 1e-4), (
      np.max(np.abs(elbo - expected_elbo) / elbo_se))
  expected_bound = np.sum(q * (expected_elbo - log_q), 1)
  assert np.all(np.abs(bound - expected_bound) < 4.5 * bound_se + 1e-4), (
      np.max(np.abs(bound - expected_bound) / bound_se))


def _tight_model() -> M2:
  """q(z|x,y) = N(0, I) = p(z) and p(x|y,z) independent of z: the z-posterior is q."""
  model = _perturbed_model(1, scale=2.0)
  last = model.encoder.net.layers[-1]
  last.kernel[...] = jnp.zeros_like(last.kernel[...])
  last.bias[...] = jnp.zeros_like(last.bias[...])
  first = model.decoder.net.layers[0]
  first.kernel[...] = first.kernel[...].at[K:].set(0.0)  # rows fed by z
  return model


def test_bounds_are_exact_where_the_posterior_is_known():
  """Closed form: L(x,y) = log p(x,y) and U(x) = log p(x) - KL(q(y|x) || p(y|x))."""
  model = _tight_model()
  ref = NumpyM2(model, ACTIVATION)
  log_pxy = np.array([[np_bernoulli(x, ref.decoder_logits(np.eye(K)[k], np.zeros(Z)))
                       for k in range(K)] for x in ALL_X]) + np.log(1.0 / K)
  log_px = np_logsumexp(log_pxy, axis=1)
  np.testing.assert_allclose(np.exp(log_px).sum(), 1.0, rtol=1e-12)
  log_q = np.stack([ref.log_q_y_given_x(x) for x in ALL_X])
  kl_y = np.sum(np.exp(log_q) * (log_q - (log_pxy - log_px[:, None])), 1)
  assert kl_y.max() > 0.05  # the classifier is not the posterior: the KL term matters
  xs = jnp.asarray(ALL_X, jnp.float32)

  @jax.jit
  def bounds(rng):
    elbo = jax.vmap(lambda x: jax.vmap(
        lambda y: m2.labeled_elbo(model, x, y, rng, num_samples=2))(jnp.eye(K)))(xs)
    return elbo, jax.vmap(lambda x: m2.unlabeled_bound(model, x, rng))(xs)

  for seed in range(3):
    elbo, bound = bounds(jax.random.key(seed))
    np.testing.assert_allclose(np.asarray(elbo), log_pxy, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bound), log_px - kl_y, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------
# 5. vmap == loop, jit == eager
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_vmap_over_batch_equals_python_loop(model):
  xs = jnp.asarray(_x_batch(5, seed=12))
  ys = jnp.eye(K, dtype=jnp.float32)[jnp.array([0, 1, 2, 1, 0])]
  keys = jax.random.split(jax.random.key(12), 5)

  @jax.jit
  def batched(xs, ys, keys):
    return {
        "elbo": jax.vmap(lambda x, y, k: m2.labeled_elbo(model, x, y, k, num_samples=2))(
            xs, ys, keys),
        "bound": jax.vmap(lambda x, k: m2.unlabeled_bound(model, x, k, num_samples=2))(
            xs, keys),
        "log_q": jax.vmap(lambda x, y: m2.classification_log_prob(model, x, y))(xs, ys),
    }

  batched = batched(xs, ys, keys)
  # One call per example (jitted per example, to keep the test fast).
  elbo = jax.jit(lambda x, y, k: m2.labeled_elbo(model, x, y, k, num_samples=2))
  bound = jax.jit(lambda x, k: m2.unlabeled_bound(model, x, k, num_samples=2))
  log_q = jax.jit(lambda x, y: m2.classification_log_prob(model, x, y))
  looped = {
      "elbo": [elbo(xs[i], ys[i], keys[i]) for i in range(5)],
      "bound": [bound(xs[i], keys[i]) for i in range(5)],
      "log_q": [log_q(xs[i], ys[i]) for i in range(5)],
  }
  for name in batched:
    assert batched[name].shape == (5,)
    np.testing.assert_allclose(np.asarray(batched[name]), np.array(looped[name]),
                               rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_jit_equals_eager(model):
  graphdef, params = nnx.split(model)
  x, y = jnp.asarray(_x_batch(1, seed=13)[0]), jnp.eye(K, dtype=jnp.float32)[2]
  rng = jax.random.key(13)

  def terms(params, x, y, rng):
    mdl = nnx.merge(graphdef, params)
    return (m2.labeled_elbo(mdl, x, y, rng, num_samples=2),
            m2.unlabeled_bound(mdl, x, rng, num_samples=2),
            m2.classification_log_prob(mdl, x, y))

  eager = terms(params, x, y, rng)
  jitted = jax.jit(terms)(params, x, y, rng)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# 6. Gradients against central finite differences (float64)
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_unlabeled_bound_gradient_matches_finite_differences():
  model = _perturbed_model(2)
  graphdef, params32 = nnx.split(model, nnx.Param)
  x32 = _x_batch(1, seed=14)[0]
  with _enable_x64():
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params32)
    flat, unravel = ravel_pytree(params)
    assert flat.dtype == jnp.float64
    x = jnp.asarray(x32, jnp.float64)
    rng = jax.random.key(14)

    @jax.jit
    def f(flat):
      return m2.unlabeled_bound(nnx.merge(graphdef, unravel(flat)), x, rng, num_samples=2)

    assert f(flat).dtype == jnp.float64
    assert np.all(np.isfinite(np.asarray(jax.grad(f)(flat))))
    # Forward and reverse mode, first and second order, against central differences
    # along random directions covering all parameters.
    jtu.check_grads(f, (flat,), order=2, modes=("fwd", "rev"), eps=1e-5, atol=1e-6,
                    rtol=1e-5)
