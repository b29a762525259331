"""Numeric tests of the label-only objectives other than the inverted bound itself.

class_balance_bound, batch_posterior_bound, sleep_objective, consistency_surrogate /
consistency_draw (bounds/untapped.py), their dispatch in objective.label_only_terms
and make_loss_fn, and the decomposition of the inverted bound averaged over labels:

  E_{p(y)} B(y) = -H(p(y)) - KL(p(x) || q(x)) - E_{p(x)} KL(p(y|x) || q(y|x))
                  - E_{p(x,y)} KL(p(z|x,y) || q(z|x,y)),   p(x,y,z) = p(y) p(z) p(x|y,z).

Every number is checked against an independent computation: exhaustive enumeration
of the 2^D binary images (and of every minibatch of a small pool), Gauss-Hermite
quadrature over a 1-d z, the NumPy (float64) reference networks of numpy_reference.py,
and gradients of enumerated expectations written here.  Monte Carlo estimates are
compared with tolerances from their standard errors (exact, from the enumerated
variance, where available; empirical otherwise).
"""

from __future__ import annotations

import functools
import itertools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from untapped_jax import objective
from untapped_jax.bounds import m2
from untapped_jax.bounds import untapped
from untapped_jax.models import M2

# The independent NumPy (float64) reference, built from the raw weight arrays.
from numpy_reference import NumpyM2
from numpy_reference import np_bernoulli
from numpy_reference import np_log_normal
from numpy_reference import np_logsumexp
from tiny_models import scale_z_rows
from tiny_models import tiny_m2

D, K, Z, H = 4, 3, 1, (6,)
ACTIVATION = "tanh"
ALL_X = np.array(list(itertools.product([0.0, 1.0], repeat=D)))  # [16, D]
EYE = np.eye(K)
PIXEL_PROBS = np.array([0.2, 0.7, 0.45, 0.9], np.float32)
Z_FIXED = np.array([[0.8], [-1.3]])  # two fixed latents [2, Z], tiled over the draws


def _model(seed: int, *, z_ignored: bool = False) -> M2:
  """Tiny tanh M2 (D=4, K=3, Z=1) with random non-zero biases.

  The decoder's z rows are scaled up so that p(x|y,z) depends clearly on z, or
  zeroed (z_ignored) so that p(x|y,z) = p(x|y) and every ELBO is noise-free.
  """
  return scale_z_rows(tiny_m2(seed, num_pixels=D, num_classes=K, latent_dim=Z, hidden=H,
                              activation=ACTIVATION, bias_seed=500 + seed),
                      0.0 if z_ignored else 2.5)


def _parts(tree, lead: int = 0) -> dict[str, np.ndarray]:
  """A params-shaped tree as {'classifier'|'encoder'|'decoder': float64 [*lead, n]}."""
  out: dict[str, list] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.asarray(leaf, np.float64)
    out.setdefault(path[0].key, []).append(leaf.reshape(leaf.shape[:lead] + (-1,)))
  return {name: np.concatenate(v, -1) for name, v in out.items()}


def _np_log_prior(name: str):
  if name == "uniform":
    return lambda x: np.full(np.shape(x)[:-1], -D * np.log(2.0))
  probs = PIXEL_PROBS.astype(np.float64)
  return lambda x: np.sum(x * np.log(probs) + (1 - x) * np.log1p(-probs), -1)


def _jax_log_prior(name: str):
  if name == "uniform":
    return untapped.uniform_log_prior
  return untapped.pixel_bernoulli_log_prior(jnp.asarray(PIXEL_PROBS))


# ---------------------------------------------------------------------------
# Independent per-image reference terms (a JAX formula written here, for gradients).
# ---------------------------------------------------------------------------

def _ref_logs(model, y, z, x):
  """(log q(y|x), log q(z|x,y), log p(x|y,z)) at one image: y [K], z [Z], x [D] -> 3 x []."""
  logits = model.classifier(x)
  log_qy = jnp.sum(y * logits) - jax.nn.logsumexp(logits)
  mean, log_var = model.encoder(x, y)
  log_qz = -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + log_var
                          + (z - mean) ** 2 * jnp.exp(-log_var))
  dec = model.decoder(y, z)
  log_px = jnp.sum(x * dec - jnp.logaddexp(0.0, dec))  # x l - log(1 + e^l)
  return log_qy, log_qz, log_px


# ---------------------------------------------------------------------------
# 1. class_balance_bound
# ---------------------------------------------------------------------------

def _np_class_balance(log_q, targets):
  """log (1/B) sum_b exp(sum_k t_k log q(k|x_b)): [B, K], [L, K] -> [L] (float64)."""
  return np.log(np.mean(np.exp(targets @ log_q.T), -1))


def _random_log_q(rs, b, k=K, scale=1.5):
  logits = scale * rs.randn(b, k)
  return logits - np_logsumexp(logits)[:, None]


def test_class_balance_is_log_mean_of_classifier_probabilities():
  rs = np.random.RandomState(0)
  log_q = _random_log_q(rs, 7)
  soft = np.abs(rs.randn(4, K))
  targets = np.concatenate([EYE, soft / soft.sum(1, keepdims=True)])
  got = jax.jit(untapped.class_balance_bound)(jnp.asarray(log_q, jnp.float32),
                                              jnp.asarray(targets, jnp.float32))
  assert got.shape == (len(targets),)
  np.testing.assert_allclose(got, _np_class_balance(log_q, targets), rtol=1e-5, atol=1e-6)
  # One-hot: log of the mean of q(y|x_b), written without any log-space trick.
  np.testing.assert_allclose(got[:K], np.log(np.exp(log_q).mean(0)), rtol=1e-5, atol=1e-6)
  # Averaged over y, the batch's class frequencies sum to one.
  np.testing.assert_allclose(np.exp(np.asarray(got[:K], np.float64)).sum(), 1.0, rtol=1e-5)


def test_class_balance_is_a_lower_bound_in_expectation_over_minibatches():
  """q(x) uniform over a pool of N=6 images: log q(y) = log (1/N) sum_n q(y|x_n).

  The minibatch estimate is below it in expectation (Jensen), over every B-tuple
  drawn with replacement and every B-subset without; sampling without replacement
  has the smaller gap (its batch mean is less spread), and B = N is exact.
  """
  ref = NumpyM2(_model(0), ACTIVATION)
  pool = ALL_X[[0, 3, 5, 9, 12, 15]]
  log_q_pool = ref.log_q_y_given_x(pool)  # [6, K]
  exact = np.log(np.exp(log_q_pool).mean(0))  # [K]
  assert np.ptp(np.exp(log_q_pool), 0).min() > 0.05  # q(y|x) varies over the pool
  bound = jax.jit(jax.vmap(untapped.class_balance_bound, (0, None)))
  eye = jnp.asarray(EYE, jnp.float32)
  for b in (2, 3):
    with_repl = np.array(list(itertools.product(range(6), repeat=b)))  # [6^b, b]
    without = np.array(list(itertools.combinations(range(6), b)))
    means = []
    for idx in (with_repl, without):
      values = np.asarray(bound(jnp.asarray(log_q_pool[idx], jnp.float32), eye), np.float64)
      expected = np.array([np.log(np.exp(log_q_pool[i]).mean(0)) for i in idx])
      np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)
      means.append(values.mean(0))
    assert np.all(means[0] < means[1] - 1e-4), (b, means)  # with < without replacement
    assert np.all(means[1] < exact - 1e-4), (b, means[1], exact)  # < log q(y): Jensen
  full = np.asarray(bound(jnp.asarray(log_q_pool[None], jnp.float32), eye))[0]
  np.testing.assert_allclose(full, exact, rtol=1e-5, atol=1e-6)
  # A constant q(y|x) leaves no Jensen gap.
  const = np.repeat(log_q_pool[:1], 3, 0)
  np.testing.assert_allclose(bound(jnp.asarray(const[None], jnp.float32), eye)[0],
                             log_q_pool[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# 2. batch_posterior_bound
# ---------------------------------------------------------------------------

def _np_batch_posterior(log_q, elbos, targets):
  """sum_b r(b|y) [t.log q(.|x_b) - log B - log r(b|y)], r ∝ exp(t.log softmax_k(elbos)_b)."""
  log_p = elbos - np_logsumexp(elbos)[:, None]  # [B, K]
  a = targets @ log_p.T  # [L, B]
  log_r = a - np_logsumexp(a)[:, None]
  scores = targets @ log_q.T
  return np.sum(np.exp(log_r) * (scores - np.log(log_q.shape[0]) - log_r), -1)


def _targets(rs, num_soft=3):
  soft = np.abs(rs.randn(num_soft, K)) + 0.1
  return np.concatenate([EYE, soft / soft.sum(1, keepdims=True)])


def test_batch_posterior_below_class_balance_matches_numpy_and_tight_at_r_equal_q():
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  post = jax.jit(untapped.batch_posterior_bound)
  balance = jax.jit(untapped.class_balance_bound)
  for seed in range(5):
    rs = np.random.RandomState(seed)
    b = 2 + seed
    log_q, elbos, targets = _random_log_q(rs, b), 5.0 * rs.randn(b, K) - 80.0, _targets(rs)
    got = np.asarray(post(f32(log_q), f32(elbos), f32(targets)), np.float64)
    np.testing.assert_allclose(got, _np_batch_posterior(log_q, elbos, targets),
                               rtol=1e-5, atol=1e-4)
    cb = _np_class_balance(log_q, targets)
    assert np.all(got <= cb + 1e-5), (seed, got, cb)  # below for any r ...
    assert np.max(cb - got) > 0.1, (seed, got, cb)  # ... strictly when r is not s below
    # The gap is KL(r || s) with s(b|y) ∝ exp(t.log q(.|x_b)): Gibbs' inequality.
    scores = targets @ log_q.T
    log_s = scores - np_logsumexp(scores)[:, None]
    log_p = elbos - np_logsumexp(elbos)[:, None]
    a = targets @ log_p.T
    log_r = a - np_logsumexp(a)[:, None]
    np.testing.assert_allclose(cb - got, np.sum(np.exp(log_r) * (log_r - log_s), -1),
                               rtol=1e-4, atol=1e-4)
    # ELBOs equal to log q(k|x_b) plus any per-image constant: r(b|y) ∝ q(y|x_b), tight.
    tight = log_q - 60.0 + 10.0 * rs.randn(b, 1)
    np.testing.assert_allclose(post(f32(log_q), f32(tight), f32(targets)),
                               balance(f32(log_q), f32(targets)), rtol=1e-5, atol=2e-5)


def test_batch_posterior_gradients_r_is_held_fixed():
  rs = np.random.RandomState(7)
  b = 5
  log_q, elbos, targets = _random_log_q(rs, b), 3.0 * rs.randn(b, K), _targets(rs)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  g_q, g_e = jax.jit(jax.grad(lambda lq, e: jnp.sum(untapped.batch_posterior_bound(
      lq, e, f32(targets))), argnums=(0, 1)))(f32(log_q), f32(elbos))
  np.testing.assert_array_equal(g_e, np.zeros((b, K)))
  # With r fixed the bound is linear in log q: d/d log q(k|x_b) = sum_l r(b|l) t_lk.
  log_p = elbos - np_logsumexp(elbos)[:, None]
  a = targets @ log_p.T
  r = np.exp(a - np_logsumexp(a)[:, None])  # [L, B]
  np.testing.assert_allclose(g_q, r.T @ targets, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# 3. sleep_objective: exact expectation and gradients by enumeration at a fixed z.
# ---------------------------------------------------------------------------

NUM_SLEEP = 20000
ALL_THREE = ("log_q_x", "log_p_z", "log_p_x")


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sleep_run(graphdef, params, y, z_tiled, rng, single_keys):
  """The code's sleep values and gradients: S = NUM_SLEEP draws at z_tiled, and
  single-draw gradients (z = z_tiled[0]) for each of single_keys."""
  def sleep(p, key, z, extra):
    return untapped.sleep_objective(nnx.merge(graphdef, p), y, key,
                                    log_prior_x=untapped.uniform_log_prior,
                                    extra_terms=extra, num_samples=z.shape[0], z=z)
  plain = jax.value_and_grad(lambda p: sleep(p, rng, z_tiled, ()))(params)
  with_px = jax.value_and_grad(lambda p: sleep(p, rng, z_tiled, ("log_p_x",)))(params)
  bound = sleep(params, rng, z_tiled, ALL_THREE)
  single = jax.vmap(lambda k: jax.grad(lambda p: sleep(p, k, z_tiled[:1], ("log_p_x",)))(
      params))(single_keys)
  return plain, with_px, bound, single


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sleep_reference(graphdef, params, y, zs, all_x):
  """Enumerated over all images, for each z of zs [G, Z]: p(x|y,z) [G, 16], the
  per-image gradients of log q(y|x) + log q(z|x,y) and of -log p(x|y,z) [G, 16, ...],
  the values [G, 16], and the gradient of sum_x p(x|y,z) [log q(y|x) + log q(z|x,y)]."""
  def per_image(p, z, x):
    log_qy, log_qz, log_px = _ref_logs(nnx.merge(graphdef, p), y, z, x)
    return log_qy + log_qz, log_px

  def for_z(z):
    values, log_px = jax.vmap(lambda x: per_image(params, z, x))(all_x)
    g_sleep = jax.vmap(lambda x: jax.grad(lambda p: per_image(p, z, x)[0])(params))(all_x)
    g_neg_px = jax.vmap(lambda x: jax.grad(lambda p: -per_image(p, z, x)[1])(params))(all_x)

    def expectation(p):
      vals, lpx = jax.vmap(lambda x: per_image(p, z, x))(all_x)
      return jnp.sum(jnp.exp(lpx) * vals)
    return jnp.exp(log_px), values, g_sleep, g_neg_px, jax.grad(expectation)(params)
  return jax.vmap(for_z)(zs)


def _np_integrand_at(ref: NumpyM2, np_log_prior_x, c: int, z):
  """Enumerated at one z [Z]: p(x|y,z) [16] and the inverted bound's integrand [16]."""
  y = EYE[c]
  log_p = np_bernoulli(ALL_X, ref.decoder_logits(y, z[None])[0])
  mean, log_var = ref.encode(ALL_X, np.broadcast_to(y, (len(ALL_X), K)))
  integrand = (np_log_prior_x(ALL_X) + ref.log_q_y_given_x(ALL_X)[:, c]
               + np_log_normal(z[None], mean, log_var) - np_log_normal(z, 0.0, 0.0) - log_p)
  return np.exp(log_p), integrand


def _mixture_mean_and_se(probs, values, num):
  """Mean over the fixed z's (each used for num / G draws) of E_{p(x|y,z)} values, and
  the standard error of the Monte Carlo mean: probs [G, 16], values [G, 16, ...]."""
  g = probs.shape[0]
  w = probs.reshape(probs.shape + (1,) * (values.ndim - 2))
  means = np.sum(w * values, 1)  # [G, ...]
  variances = np.sum(w * (values - means[:, None]) ** 2, 1)
  return means.mean(0), np.sqrt(variances.sum(0) / (g * num))


@pytest.mark.slow
def test_sleep_objective_value_and_gradients_match_enumeration():
  model = _model(1)
  graphdef, params = nnx.split(model)
  c = 1
  y = jnp.asarray(EYE[c], jnp.float32)
  z_tiled = jnp.asarray(np.tile(Z_FIXED, (NUM_SLEEP // len(Z_FIXED), 1)), jnp.float32)
  single_keys = jax.random.split(jax.random.key(5), 8)
  (v_plain, g_plain), (v_px, g_px), v_bound, g_single = _sleep_run(
      graphdef, params, y, z_tiled, jax.random.key(4), single_keys)
  probs, values, g_sleep, g_neg_px, g_expect = jax.tree.map(
      lambda a: np.asarray(a, np.float64), _sleep_reference(
          graphdef, params, y, jnp.asarray(Z_FIXED, jnp.float32), jnp.asarray(ALL_X,
                                                                               jnp.float32)))
  # The reference's p(x|y,z) agrees with NumPy's and p(x|y,z) really depends on z.
  ref = NumpyM2(model, ACTIVATION)
  np_probs = np.stack([_np_integrand_at(ref, _np_log_prior("uniform"), c, z)[0]
                       for z in Z_FIXED])
  np.testing.assert_allclose(probs, np_probs, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
  assert np.abs(probs[0] - probs[1]).max() > 0.05

  # (a) The value: log q(y|x) + log q(z|x,y) averaged over x ~ p(x|y,z).
  mean, se = _mixture_mean_and_se(probs, values, NUM_SLEEP)
  assert abs(float(v_plain) - mean) < 5 * se + 1e-4, (float(v_plain), mean, se)
  # All three extra terms: the inverted bound at these z (NumPy enumeration).
  pieces = [_np_integrand_at(ref, _np_log_prior("uniform"), c, z) for z in Z_FIXED]
  b_mean, b_se = _mixture_mean_and_se(np.stack([p for p, _ in pieces]),
                                      np.stack([v for _, v in pieces]), NUM_SLEEP)
  assert abs(float(v_bound) - b_mean) < 5 * b_se + 1e-4, (float(v_bound), b_mean, b_se)

  # (b) Classifier and encoder: the mean gradient over draws estimates the gradient of
  # the enumerated expectation (x has no gradient path; p(x|y,z) has no such parameter).
  g_mean, g_se = _mixture_mean_and_se(probs, np.stack([np.concatenate(
      [_parts(jax.tree.map(lambda a: a[i], g_sleep), 1)[n] for n in ("classifier", "encoder")],
      -1) for i in range(len(Z_FIXED))]), NUM_SLEEP)
  exact = np.concatenate([_parts(g_expect, 1)[n] for n in ("classifier", "encoder")], -1)
  np.testing.assert_allclose(g_mean, exact.mean(0), rtol=1e-4, atol=1e-5)  # same thing
  code = np.concatenate([_parts(g_plain)[n] for n in ("classifier", "encoder")])
  assert np.abs(exact).max() > 0.05
  assert np.all(np.abs(code - g_mean) < 5 * g_se + 2e-5), np.max(np.abs(code - g_mean) / (
      g_se + 1e-9))
  # -log p(x|y,z) does not change the classifier and encoder gradients (same draws).
  for n in ("classifier", "encoder"):
    np.testing.assert_allclose(_parts(g_px)[n], _parts(g_plain)[n], rtol=1e-6, atol=1e-7)

  # Decoder: exactly zero without 'log_p_x'; with it, the score function, whose
  # enumerated expectation is zero and whose Monte Carlo mean is zero within its SE.
  np.testing.assert_array_equal(_parts(g_plain)["decoder"], 0.0)
  dec = _parts(g_neg_px, 2)["decoder"]  # [G, 16, n]
  assert np.abs(dec).max() > 0.1
  np.testing.assert_allclose(np.sum(probs[..., None] * dec, 1), 0.0, atol=1e-6)
  d_mean, d_se = _mixture_mean_and_se(probs, dec, NUM_SLEEP)
  code_dec = _parts(g_px)["decoder"]
  assert np.all(np.abs(code_dec - d_mean) < 5 * d_se + 2e-5), (code_dec, d_se)
  # Single draws: non-zero, and each is the score at one of the 16 images (z = z[0]).
  singles = _parts(g_single, 1)["decoder"]  # [8, n]
  assert np.all(np.abs(singles).max(1) > 0.05)
  dist = np.abs(singles[:, None] - dec[0][None]).max(-1)  # [8, 16]
  assert np.all(dist.min(1) < 1e-5), dist.min(1)
  assert len(set(dist.argmin(1).tolist())) > 1  # the draws differ


def test_sleep_objective_rejects_unknown_terms():
  with pytest.raises(ValueError, match="log_q_w"):
    untapped.sleep_objective(_model(0), jnp.asarray(EYE[0], jnp.float32), jax.random.key(0),
                             log_prior_x=untapped.uniform_log_prior,
                             extra_terms=("log_q_x", "log_q_w"))


# ---------------------------------------------------------------------------
# 4. E_y B(y) = -H(p(y)) - KL(p(x)||q(x)) - E KL(p(y|x)||q(y|x)) - E KL(p(z|x,y)||q(z|x,y))
# ---------------------------------------------------------------------------

NUM_NODES = 40


def _enumerated_joint(ref: NumpyM2, np_log_prior_x, z_ignored: bool) -> dict:
  """Every term of the identity by enumeration over x, y and quadrature over z [G]."""
  nodes, weights = np.polynomial.hermite_e.hermegauss(NUM_NODES)
  w = weights / np.sqrt(2 * np.pi)  # E_{N(0,1)} f ~ sum_g w_g f(z_g)
  assert abs(w.sum() - 1.0) < 1e-12
  z = nodes[:, None]  # [G, Z=1]
  log_qx = np_log_prior_x(ALL_X)  # [16]
  log_qy = ref.log_q_y_given_x(ALL_X)  # [16, K]
  log_pz = np_log_normal(z, 0.0, 0.0)  # [G]
  log_px_yz = np.stack([np_bernoulli(ALL_X[None], ref.decoder_logits(EYE[c], z)[:, None])
                        for c in range(K)])  # [K, G, 16]
  enc = [ref.encode(ALL_X, np.broadcast_to(EYE[c], (len(ALL_X), K))) for c in range(K)]
  log_qz = np.stack([np_log_normal(z[:, None], m[None], v[None]) for m, v in enc])  # [K,G,16]

  # B(y) = E_{p(z) p(x|y,z)} [log q(x) + log q(y|x) + log q(z|x,y) - log p(z) - log p(x|y,z)].
  integrand = (log_qx[None, None] + log_qy.T[:, None] + log_qz - log_pz[None, :, None]
               - log_px_yz)
  bound = np.einsum("g,kgx,kgx->k", w, np.exp(log_px_yz), integrand)

  p_x_given_y = np.einsum("g,kgx->kx", w, np.exp(log_px_yz))  # [K, 16]
  p_xy = p_x_given_y.T / K  # [16, K]
  p_x = p_xy.sum(1)
  p_y_given_x = p_xy / p_x[:, None]
  kl_x = np.sum(p_x * (np.log(p_x) - log_qx))
  kl_y = np.sum(p_xy * (np.log(p_y_given_x) - log_qy))
  if z_ignored:  # p(z|x,y) = p(z): KL(N(0,1) || N(m, e^v)) in closed form.
    kl_z_xy = np.stack([0.5 * np.sum((1 + m ** 2) / np.exp(v) - 1 + v, -1) for m, v in enc])
  else:  # p(z|x,y) on the grid: weights w_g p(x|y,z_g) / p(x|y), density p(z)p(x|y,z)/p(x|y).
    post = w[None, :, None] * np.exp(log_px_yz) / p_x_given_y[:, None]  # [K, G, 16]
    log_post = log_pz[None, :, None] + log_px_yz - np.log(p_x_given_y)[:, None]
    kl_z_xy = np.sum(post * (log_post - log_qz), 1)  # [K, 16]
  kl_z = np.sum(p_xy.T * kl_z_xy)
  return {"bound": bound, "p_x": p_x, "kl_x": kl_x, "kl_y": kl_y, "kl_z": kl_z,
          "p_x_given_y": p_x_given_y}


@pytest.mark.parametrize("prior", ["uniform", "pixel_bernoulli"])
@pytest.mark.parametrize("z_ignored", [False, True])
def test_label_averaged_bound_decomposes_into_kls(z_ignored, prior):
  model = _model(2, z_ignored=z_ignored)
  ref = NumpyM2(model, ACTIVATION)
  terms = _enumerated_joint(ref, _np_log_prior(prior), z_ignored)
  np.testing.assert_allclose(terms["p_x"].sum(), 1.0, rtol=1e-10)
  np.testing.assert_allclose(terms["p_x_given_y"].sum(1), 1.0, rtol=1e-10)
  # None of the three KLs is negligible, so the identity is not trivially met.
  assert min(terms["kl_x"], terms["kl_y"], terms["kl_z"]) > 1e-2, terms
  lhs = terms["bound"].mean()
  rhs = -np.log(K) - terms["kl_x"] - terms["kl_y"] - terms["kl_z"]
  np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-9)
  # Each B(y) is a lower bound on log q(y) = log sum_x q(x) q(y|x).
  log_q_y = np_logsumexp(_np_log_prior(prior)(ALL_X)[:, None]
                         + ref.log_q_y_given_x(ALL_X), 0)
  assert np.all(terms["bound"] < log_q_y), (terms["bound"], log_q_y)


NUM_BOUND = 20000


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _label_only_bounds(graphdef, params, z_tiled, keys):
  """label_only_bound at the fixed z_tiled [S, Z] for each class, both priors: [2, K]."""
  model = nnx.merge(graphdef, params)
  labels = jnp.eye(K, dtype=jnp.float32)
  return jnp.stack([jax.vmap(lambda y, key: untapped.label_only_bound(
      model, y, key, log_prior_x=_jax_log_prior(name), estimator="exact",
      num_samples=z_tiled.shape[0], z=z_tiled))(labels, keys)
                    for name in ("uniform", "pixel_bernoulli")])


@pytest.mark.parametrize("z_ignored", [False, True])
def test_label_only_bound_at_fixed_z_matches_enumeration(z_ignored):
  model = _model(2, z_ignored=z_ignored)
  ref = NumpyM2(model, ACTIVATION)
  graphdef, params = nnx.split(model)
  z_tiled = jnp.asarray(np.tile(Z_FIXED, (NUM_BOUND // len(Z_FIXED), 1)), jnp.float32)
  got = np.asarray(_label_only_bounds(graphdef, params, z_tiled,
                                      jax.random.split(jax.random.key(8), K)), np.float64)
  for i, prior in enumerate(("uniform", "pixel_bernoulli")):
    for c in range(K):
      pieces = [_np_integrand_at(ref, _np_log_prior(prior), c, z) for z in Z_FIXED]
      mean, se = _mixture_mean_and_se(np.stack([p for p, _ in pieces]),
                                      np.stack([v for _, v in pieces]), NUM_BOUND)
      assert abs(got[i, c] - mean) < 5 * se + 1e-4, (prior, c, got[i, c], mean, se)
  if z_ignored:
    return
  # Quadrature over z: B(y) from the fixed-z pieces on the Gauss-Hermite grid is
  # the enumerated B(y) of the identity test.
  terms = _enumerated_joint(ref, _np_log_prior("uniform"), False)
  nodes, weights = np.polynomial.hermite_e.hermegauss(NUM_NODES)
  for c in range(K):
    at_nodes = [np.sum(np.prod(_np_integrand_at(ref, _np_log_prior("uniform"), c,
                                                np.array([n])), 0)) for n in nodes]
    np.testing.assert_allclose(np.dot(weights / np.sqrt(2 * np.pi), at_nodes),
                               terms["bound"][c], rtol=1e-9)


@pytest.mark.slow
def test_label_only_log_terms_rejects_z_of_wrong_shape():
  model = _model(0)
  y = jnp.asarray(EYE[0], jnp.float32)
  kwargs = dict(log_prior_x=untapped.uniform_log_prior, num_samples=2)
  for bad in (np.zeros((3, Z)), np.zeros((2, Z + 1)), np.zeros((2,))):
    with pytest.raises(ValueError, match=r"z of shape \(" + ", ".join(map(str, bad.shape))):
      untapped.label_only_log_terms(model, y, jax.random.key(0),
                                    z=jnp.asarray(bad, jnp.float32), **kwargs)
  with pytest.raises(ValueError, match=r"num_samples=2, latent_dim=1"):
    untapped.label_only_bound(model, y, jax.random.key(0),
                              z=jnp.zeros((3, Z), jnp.float32), **kwargs)
  # The right shape is accepted.
  terms = untapped.label_only_log_terms(model, y, jax.random.key(0),
                                        z=jnp.zeros((2, Z), jnp.float32), **kwargs)
  assert terms["log_q_z"].shape == (2,)


# ---------------------------------------------------------------------------
# 5. consistency: score-function surrogate with a leave-one-out baseline.
# ---------------------------------------------------------------------------

def test_consistency_surrogate_value_and_gradients():
  rs = np.random.RandomState(3)
  f, lp = rs.randn(5), rs.randn(5)
  fn = lambda f, lp: jnp.mean(untapped.consistency_surrogate(f, lp))
  value = untapped.consistency_surrogate(jnp.asarray(f, jnp.float32),
                                         jnp.asarray(lp, jnp.float32))
  np.testing.assert_allclose(value, f, rtol=1e-6)
  g_f, g_lp = jax.grad(fn, argnums=(0, 1))(jnp.asarray(f, jnp.float32),
                                           jnp.asarray(lp, jnp.float32))
  np.testing.assert_allclose(g_f, np.full(5, 1 / 5), rtol=1e-6)
  baseline = np.array([np.mean(np.delete(f, i)) for i in range(5)])
  np.testing.assert_allclose(g_lp, (f - baseline) / 5, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="at least 2"):
    untapped.consistency_surrogate(jnp.zeros(1), jnp.zeros(1))


@pytest.mark.slow
def test_consistency_draw_is_one_enumerated_image():
  model = _model(3)
  ref = NumpyM2(model, ACTIVATION)
  graphdef, params = nnx.split(model)
  c, z = 2, Z_FIXED[0]
  y = jnp.asarray(EYE[c], jnp.float32)

  @jax.jit
  def draws(params, keys):
    def one(key):
      fn = lambda p: untapped.consistency_draw(nnx.merge(graphdef, p), y, key,
                                               z=jnp.asarray(z, jnp.float32))
      (f, lp), vjp = jax.vjp(fn, params)
      return f, lp, vjp((jnp.ones(()), jnp.zeros(())))[0], vjp((jnp.zeros(()),
                                                                  jnp.ones(())))[0]
    return jax.vmap(one)(keys)

  f, lp, g_f, g_lp = draws(params, jax.random.split(jax.random.key(1), 6))
  log_q = ref.log_q_y_given_x(ALL_X)[:, c]
  log_p = np_bernoulli(ALL_X, ref.decoder_logits(EYE[c], z[None])[0])
  for s in range(6):
    # (f, log p) is (log q(y|x), log p(x|y,z)) at one and the same binary image.
    i = np.argmin(np.abs(log_p - float(lp[s])))
    np.testing.assert_allclose([float(f[s]), float(lp[s])], [log_q[i], log_p[i]],
                               rtol=1e-5, atol=1e-5)
  assert all(np.all(g == 0) for g in jax.tree.leaves(g_f))  # f is stopped
  parts = _parts(g_lp, 1)
  np.testing.assert_array_equal(parts["classifier"], 0.0)
  np.testing.assert_array_equal(parts["encoder"], 0.0)
  assert np.all(np.abs(parts["decoder"]).max(1) > 0)


NUM_BATCHES = 4000
Y_BATCH = EYE[[0, 1, 2, 1]]  # L = 4 label-only examples
FIXED_Z = np.array([[[0.6]], [[-1.1]], [[0.3]]], np.float32)  # [K, S=1, Z]


@pytest.mark.slow
def test_consistency_gradient_is_unbiased_for_decoder_and_zero_elsewhere():
  model = _model(4)
  last = model.classifier.net.layers[-1]
  last.kernel[...] = 4.0 * last.kernel[...]  # a sharper q(y|x): a larger gradient
  graphdef, params = nnx.split(model)
  settings = objective.LabelOnlySettings(objective="consistency", num_samples=1,
                                         image_prior="uniform", fixed_z=FIXED_Z)
  labels = jnp.asarray(Y_BATCH, jnp.float32)

  @jax.jit
  def run(params, keys):
    def one(key):
      return jax.value_and_grad(lambda p: jnp.mean(objective.label_only_terms(
          nnx.merge(graphdef, p), labels, key, settings=settings,
          log_prior_x=untapped.uniform_log_prior)))(params)

    def exact(p):  # (1/L) sum_l sum_x p(x|y_l,z_l) log q(y_l|x), classifier held fixed
      m = nnx.merge(graphdef, p)
      total = 0.0
      for c in np.argmax(Y_BATCH, 1):
        y, z = jnp.asarray(EYE[c], jnp.float32), jnp.asarray(FIXED_Z[c, 0])
        log_qy, _, log_px = jax.vmap(lambda x: _ref_logs(m, y, z, x))(
            jnp.asarray(ALL_X, jnp.float32))
        total += jnp.sum(jnp.exp(log_px) * jax.lax.stop_gradient(log_qy))
      return total / len(Y_BATCH)
    return jax.vmap(one)(keys), jax.value_and_grad(exact)(params)

  (values, grads), (e_value, e_grad) = run(params, jax.random.split(jax.random.key(2),
                                                                    NUM_BATCHES))
  values, parts, exact = np.asarray(values, np.float64), _parts(grads, 1), _parts(e_grad)
  # Forward value: f = log q(y|x) at the draws, whose mean is the enumerated expectation.
  se = values.std() / np.sqrt(NUM_BATCHES)
  assert abs(values.mean() - float(e_value)) < 5 * se + 1e-4, (values.mean(), e_value, se)
  # Decoder: unbiased score-function gradient of E_{p(x|y,z)} log q(y|x).
  dec = parts["decoder"]  # [N, n]
  mean, se = dec.mean(0), dec.std(0) / np.sqrt(NUM_BATCHES)
  assert np.abs(exact["decoder"]).max() > 0.05
  assert np.max(np.abs(exact["decoder"]) / se) > 10  # the check can tell a wrong gradient
  assert np.all(np.abs(mean - exact["decoder"]) < 4.5 * se + 1e-4), np.max(
      np.abs(mean - exact["decoder"]) / se)
  # Every batch's estimate is non-zero, and the classifier and encoder get nothing.
  assert np.all(np.abs(dec).max(1) > 0)
  np.testing.assert_array_equal(parts["classifier"], 0.0)
  np.testing.assert_array_equal(parts["encoder"], 0.0)


# ---------------------------------------------------------------------------
# 6. objective: batch_terms' per-class ELBOs and the batch-level label-only terms.
# ---------------------------------------------------------------------------

def _batch(seed=0, nl=5, nu=4, nlo=6):
  rs = np.random.RandomState(seed)
  f = lambda *s: jnp.asarray(rs.randint(0, 2, size=s), jnp.float32)
  return {"labeled": {"x": f(nl, D), "y": jnp.asarray(np.eye(K)[rs.randint(0, K, nl)],
                                                      jnp.float32)},
          "unlabeled": {"x": f(nu, D)},
          "label_only": {"y": jnp.asarray(np.eye(K)[rs.randint(0, K, nlo)], jnp.float32)}}


@pytest.mark.slow
@pytest.mark.parametrize("name,smoothing", [("class_balance", 1.0),
                                            ("batch_posterior", 0.9)])
def test_batch_level_label_only_terms_in_the_loss(name, smoothing):
  model = _model(5, z_ignored=True)  # noise-free: every ELBO is deterministic
  ref = NumpyM2(model, ACTIVATION)
  graphdef, params = nnx.split(model)
  batch, rng = _batch(), jax.random.key(9)
  a, b, c, d = 0.7, 1.3, 0.25, 2.0
  weights = objective.StreamWeights.from_batch_means(labeled=a, unlabeled=b,
                                                     classification=c, label_only=d)
  settings = objective.LabelOnlySettings(objective=name, image_prior="uniform",
                                         label_smoothing=smoothing)
  xu = batch["unlabeled"]["x"]

  @jax.jit
  def run(params):
    m = nnx.merge(graphdef, params)
    terms = objective.batch_terms(m, batch, rng)
    direct = jax.vmap(lambda x, key: jax.vmap(lambda y: m2.labeled_elbo(m, x, y, key))(
        jnp.eye(K)))(xu, jax.random.split(jax.random.key(3), len(xu)))
    loss, metrics = objective.make_loss_fn(graphdef, weights, label_only=settings)(
        params, batch, rng)

    def label_only_mean(p):
      mp = nnx.merge(graphdef, p)
      return jnp.mean(objective.label_only_terms(
          mp, batch["label_only"]["y"], rng, settings=settings,
          log_prior_x=untapped.uniform_log_prior,
          unlabeled_terms=objective.batch_terms(mp, batch, rng)))
    return terms, direct, loss, metrics, jax.value_and_grad(label_only_mean)(params)

  terms, direct, loss, metrics, (lo_value, lo_grad) = run(params)
  xl, yl = np.asarray(batch["labeled"]["x"]), np.asarray(batch["labeled"]["y"])
  xu, ylo = np.asarray(xu), np.asarray(batch["label_only"]["y"])
  eps = np.zeros((1, Z))  # any noise: the decoder ignores z
  elbos = np.array([[ref.labeled_elbo(x, EYE[k], eps) for k in range(K)] for x in xu])
  log_q_u = ref.log_q_y_given_x(xu)
  np.testing.assert_allclose(terms["unlabeled_elbos"], elbos, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(direct, elbos, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(terms["unlabeled_log_q"], log_q_u, rtol=1e-5, atol=1e-5)

  targets = np.where(ylo == 1, smoothing, (1 - smoothing) / (K - 1))
  if name == "class_balance":
    label_only = _np_class_balance(log_q_u, targets)
  else:
    label_only = _np_batch_posterior(log_q_u, elbos, targets)
  labeled = np.array([ref.labeled_elbo(x, y, eps) for x, y in zip(xl, yl)])
  log_q = np.sum(yl * ref.log_q_y_given_x(xl), 1)
  unlabeled = np.array([ref.unlabeled_bound(x, np.zeros((K, 1, Z))) for x in xu])
  expected = -(a * labeled.mean() + c * log_q.mean() + b * unlabeled.mean()
               + d * label_only.mean())
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(float(metrics["label_only_estimate"]), label_only.mean(),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(lo_value), label_only.mean(), rtol=1e-5, atol=1e-5)
  # Only the classifier is trained by these terms (r's ELBOs are stopped).
  parts = _parts(lo_grad)
  np.testing.assert_array_equal(parts["decoder"], 0.0)
  np.testing.assert_array_equal(parts["encoder"], 0.0)
  assert np.abs(parts["classifier"]).max() > 1e-3
