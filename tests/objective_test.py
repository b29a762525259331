"""Numeric tests of the training objective (untapped_jax.objective) for M2.

The stream weights are checked against their closed forms, LabelOnlySettings
against the errors its invalid values must raise, the loss against the weighted
combination of per-example terms, and its batch estimate against the full-data
objective J of the module doc, with J computed independently in NumPy from the
raw weight arrays (closed form for a noise-free model, Gauss-Hermite quadrature
over z otherwise).
"""

from __future__ import annotations

import itertools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from untapped_jax import objective
from untapped_jax import models
from untapped_jax.bounds import m2
from untapped_jax.models import M2

from numpy_reference import NumpyM2
from numpy_reference import np_bernoulli
from tiny_models import scale_z_rows
from tiny_models import tiny_m2
from repo_files import POSTER
from repo_files import load_module

D, K, Z, H = 6, 3, 2, (5,)


# ---------------------------------------------------------------------------
# 1. StreamWeights.from_sizes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_l, n_u, n_lo, w, lam", [
    (100, 49_900, 7, 0.1, 2.0),
    (3, 5, 0, 0.3, 0.0),
    (10, 0, 4, 1.0, 0.5),
])
def test_stream_weights_from_sizes(n_l, n_u, n_lo, w, lam):
  sw = objective.StreamWeights.from_sizes(num_labeled=n_l, num_unlabeled=n_u,
                                          num_label_only=n_lo, classification_weight=w,
                                          label_only_weight=lam)
  n = n_l + n_u
  assert sw.labeled == pytest.approx(n_l / n, rel=1e-12)
  assert sw.unlabeled == pytest.approx(n_u / n, rel=1e-12)
  assert sw.classification == pytest.approx(w * n / n_l, rel=1e-12)
  assert sw.label_only == pytest.approx(lam * n_lo / n, rel=1e-12, abs=0.0)
  assert sw.labeled + sw.unlabeled == pytest.approx(1.0)
  # Kingma et al.: alpha log q(y|x) per labeled example with alpha = w N / N_l, so the
  # classification term's total weight in J (1/N per image) is w / N_l per labeled example.
  assert sw.labeled * sw.classification == pytest.approx(w)


@pytest.mark.parametrize("n_l", [0, -3])
def test_stream_weights_need_a_labeled_example(n_l):
  with pytest.raises(ValueError, match="num_labeled"):
    objective.StreamWeights.from_sizes(num_labeled=n_l, num_unlabeled=10, num_label_only=1,
                                       classification_weight=0.1, label_only_weight=1.0)


def test_untapped_at_lambda_zero_has_no_label_only_numbers():
  from untapped_jax.configs import default  # pylint: disable=g-import-not-at-top
  sizes = dict(num_labeled=10, num_unlabeled=30, num_label_only=5, pixel_probs=PIXEL_PROBS)
  numbers = {}
  for name, lam in (("m2", 0.5), ("untapped", 0.0), ("untapped", 0.5)):
    c = default.get_config()
    c.model_name, c.objective.label_only_weight = name, lam
    numbers[name, lam] = objective.loss_numbers(c, **sizes)
  # Untapped at lambda 0 is M2: no label-only settings, so make_loss_fn skips the stream.
  assert numbers["m2", 0.5].label_only is None and numbers["untapped", 0.0].label_only is None
  assert jax.tree.all(jax.tree.map(np.array_equal, numbers["m2", 0.5],
                                   numbers["untapped", 0.0]))
  lo = numbers["untapped", 0.5].label_only
  assert lo.objective == "bound" and lo.pixel_probs.dtype == np.float32
  np.testing.assert_array_equal(lo.pixel_probs, PIXEL_PROBS)
  # Static choices are the pytree's structure, numbers its leaves.
  assert len(jax.tree.leaves(lo)) == 3  # temperature, label smoothing, pixel_probs


# ---------------------------------------------------------------------------
# LabelOnlySettings.check: invalid settings raise ValueError
# ---------------------------------------------------------------------------

PIXEL_PROBS = np.full(D, 0.5, np.float32)  # a fitted q(x); only its presence matters here


def test_label_only_settings_validation():
  with pytest.raises(ValueError, match="pixel_probs"):
    objective.LabelOnlySettings(image_prior="pixel_bernoulli").check()
  with pytest.raises(ValueError, match="image_prior"):
    objective.LabelOnlySettings(image_prior="gan", pixel_probs=PIXEL_PROBS).check()
  for bad in (0.0, 1.5):
    with pytest.raises(ValueError, match="label_smoothing"):
      objective.LabelOnlySettings(label_smoothing=bad, pixel_probs=PIXEL_PROBS).check()
  with pytest.raises(ValueError, match="gumbel_softmax"):
    objective.LabelOnlySettings(estimator="gumbel_softmax", image_prior="uniform").check()


# ---------------------------------------------------------------------------
# Tiny model, data, and an independent NumPy reference
# ---------------------------------------------------------------------------

def _model(seed=0, *, noise_free=False) -> M2:
  """Tiny M2 with non-zero biases. noise_free: p(x|y,z) ignores z, so L and U are
  deterministic (any eps gives the same value)."""
  model = tiny_m2(seed, num_pixels=D, num_classes=K, latent_dim=Z, hidden=H,
                  activation="softplus", bias_seed=200 + seed)
  return scale_z_rows(model, 0.0) if noise_free else model


class QuadratureObjective:
  """The full-data objective J in float64 NumPy: numpy_reference's networks, with the
  expectations over z (Z = 2) by Gauss-Hermite quadrature."""

  def __init__(self, model: M2):
    self.ref = NumpyM2(model, "softplus")
    nodes, weights = np.polynomial.hermite_e.hermegauss(30)
    self.u = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    self.w = np.outer(weights, weights).reshape(-1) / (2 * np.pi)

  def expected_elbo(self, x, y):
    """E_eps[L(x, y)] = E_q[log p(x|y,z)] + log(1/K) - KL(q(z|x,y) || N(0, I))."""
    mean, log_var = self.ref.encode(x, y)
    z = mean + np.exp(0.5 * log_var) * self.u
    log_px = np_bernoulli(np.asarray(x, np.float64), self.ref.decoder_logits(y, z))
    kl = np.sum(-0.5 * log_var + 0.5 * (np.exp(log_var) + mean ** 2) - 0.5)
    return self.w @ log_px + np.log(1.0 / K) - kl

  def expected_unlabeled(self, x):
    log_q = self.ref.log_q_y_given_x(x)
    return sum(np.exp(log_q[k]) * (self.expected_elbo(x, np.eye(K)[k]) - log_q[k])
               for k in range(K))

  def objective(self, xl, yl, xu, *, classification_weight):
    """J = (1/N)[sum_l (L + alpha log q(y|x)) + sum_u U], alpha = w N / N_l (module doc)."""
    n_l, n_u = len(xl), len(xu)
    n = n_l + n_u
    alpha = classification_weight * n / n_l
    labeled = sum(self.expected_elbo(x, y) + alpha * (y @ self.ref.log_q_y_given_x(x))
                  for x, y in zip(xl, yl))
    unlabeled = sum(self.expected_unlabeled(x) for x in xu)
    return (labeled + unlabeled) / n


def _data(n_l, n_u, seed=0):
  rs = np.random.RandomState(seed)
  xl = rs.randint(0, 2, (n_l, D)).astype(np.float32)
  yl = np.eye(K, dtype=np.float32)[rs.randint(0, K, n_l)]
  xu = rs.randint(0, 2, (n_u, D)).astype(np.float32)
  return xl, yl, xu


def _batch(xl, yl, xu):
  return {"labeled": {"x": jnp.asarray(xl), "y": jnp.asarray(yl)},
          "unlabeled": {"x": jnp.asarray(xu)},
          # The real step also carries the label-only stream; M2 must ignore it.
          "label_only": {"y": jnp.asarray(np.eye(K, dtype=np.float32)[[0, 2]])}}


# ---------------------------------------------------------------------------
# 2. make_loss_fn = minus the weighted per-example terms
# ---------------------------------------------------------------------------

NUM_SAMPLES = 2
WEIGHTS = objective.StreamWeights.from_sizes(
    num_labeled=10, num_unlabeled=30, num_label_only=5, classification_weight=0.1,
    label_only_weight=1.0)


@pytest.fixture(scope="module")
def setup():
  model = _model(0)
  graphdef, params = nnx.split(model)
  xl, yl, xu = _data(3, 4, seed=1)
  per_example = {
      "elbo": jax.jit(lambda x, y, k: m2.labeled_elbo(model, x, y, k, num_samples=NUM_SAMPLES)),
      "log_q": jax.jit(lambda x, y: m2.classification_log_prob(model, x, y)),
      "bound": jax.jit(lambda x, k: m2.unlabeled_bound(model, x, k, num_samples=NUM_SAMPLES)),
  }
  loss_fn = jax.jit(objective.make_loss_fn(graphdef, WEIGHTS, num_samples=NUM_SAMPLES))
  return dict(model=model, graphdef=graphdef, params=params, xl=xl, yl=yl, xu=xu,
              per_example=per_example, loss_fn=loss_fn)


def _looped_terms(s, rng):
  """Per-example terms, one call each, with batch_terms' keys: rng_l, rng_u = split(rng)."""
  rng_l, rng_u = jax.random.split(rng)
  keys_l = jax.random.split(rng_l, len(s["xl"]))
  keys_u = jax.random.split(rng_u, len(s["xu"]))
  f = s["per_example"]
  elbo = np.array([float(f["elbo"](x, y, k)) for x, y, k in zip(s["xl"], s["yl"], keys_l)])
  log_q = np.array([float(f["log_q"](x, y)) for x, y in zip(s["xl"], s["yl"])])
  bound = np.array([float(f["bound"](x, k)) for x, k in zip(s["xu"], keys_u)])
  return elbo, log_q, bound


@pytest.mark.slow
def test_batch_terms_match_per_example_loop(setup):
  s = setup
  rng = jax.random.key(3)
  terms = jax.jit(lambda batch, rng: objective.batch_terms(
      s["model"], batch, rng, num_samples=NUM_SAMPLES))(_batch(s["xl"], s["yl"], s["xu"]), rng)
  elbo, log_q, bound = _looped_terms(s, rng)
  np.testing.assert_allclose(np.asarray(terms["labeled_elbo"]), elbo, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(terms["log_q_y"]), log_q, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(terms["unlabeled_bound"]), bound, rtol=1e-5, atol=1e-5)


def _expected_loss(s, elbo, log_q, bound):
  n_l, n_u, w = 10, 30, 0.1  # the sizes WEIGHTS was built from
  n = n_l + n_u
  alpha = w * n / n_l
  # J_hat = (1/N)[N_l mean_l(L + alpha log q) + N_u mean_u(U)]
  return -(n_l * np.mean(elbo + alpha * log_q) + n_u * np.mean(bound)) / n


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_is_minus_weighted_per_example_terms(setup, seed):
  s = setup
  rng = jax.random.key(seed)
  loss, metrics = s["loss_fn"](s["params"], _batch(s["xl"], s["yl"], s["xu"]), rng)
  # make_loss_fn hands batch_terms the first half of split(rng) (the second is the
  # label-only stream's key).
  m2_rng = jax.random.split(rng)[0]
  elbo, log_q, bound = _looped_terms(s, m2_rng)
  assert loss.shape == ()
  np.testing.assert_allclose(float(loss), _expected_loss(s, elbo, log_q, bound),
                             rtol=1e-5, atol=1e-5)
  for name in ("labeled_elbo", "log_q_y", "unlabeled_bound", "objective"):
    assert name in metrics, name
  for name, value in metrics.items():
    assert np.isfinite(float(value)), name
  np.testing.assert_allclose(float(metrics["labeled_elbo"]), elbo.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["log_q_y"]), log_q.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["unlabeled_bound"]), bound.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["objective"]), -float(loss), rtol=1e-6)


@pytest.mark.slow
def test_loss_weighting_from_metrics_and_gradient_is_finite(setup):
  """Independent of how the rng is split: loss = -(w_l (mean L + alpha mean log q) + w_u mean U)."""
  s = setup
  loss_fn = objective.make_loss_fn(s["graphdef"], WEIGHTS, num_samples=NUM_SAMPLES)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      s["params"], _batch(s["xl"], s["yl"], s["xu"]), jax.random.key(5))
  # N_l = 10, N_u = 30, w = 0.1: w_l = 1/4, w_u = 3/4, alpha = 0.1 * 40 / 10.
  want = -(0.25 * (float(metrics["labeled_elbo"]) + 0.4 * float(metrics["log_q_y"]))
           + 0.75 * float(metrics["unlabeled_bound"]))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  leaves = jax.tree.leaves(grads)
  assert len(leaves) == len(jax.tree.leaves(s["params"]))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


def test_loss_depends_on_rng_only_through_the_noise(setup):
  s = setup
  batch = _batch(s["xl"], s["yl"], s["xu"])
  _, m1 = s["loss_fn"](s["params"], batch, jax.random.key(0))
  _, m2_ = s["loss_fn"](s["params"], batch, jax.random.key(1))
  assert float(m1["log_q_y"]) == float(m2_["log_q_y"])
  assert float(m1["labeled_elbo"]) != float(m2_["labeled_elbo"])


# ---------------------------------------------------------------------------
# Unbiasedness: the batch loss averages to the full-data objective -J
# ---------------------------------------------------------------------------

N_L, N_U, B_L, B_U, CLS_W = 4, 5, 2, 3, 0.3


def _all_batches(xl, yl, xu):
  for il in itertools.combinations(range(N_L), B_L):
    for iu in itertools.combinations(range(N_U), B_U):
      yield _batch(xl[list(il)], yl[list(il)], xu[list(iu)])


@pytest.mark.slow
def test_batch_loss_is_unbiased_for_full_data_objective_noise_free():
  """Exact: with p(x|y,z) independent of z the terms are deterministic, and the mean
  of the loss over all C(4,2) x C(5,3) batches must equal -J (closed form in NumPy)."""
  model = _model(1, noise_free=True)
  graphdef, params = nnx.split(model)
  xl, yl, xu = _data(N_L, N_U, seed=2)
  weights = objective.StreamWeights.from_sizes(
      num_labeled=N_L, num_unlabeled=N_U, num_label_only=0, classification_weight=CLS_W,
      label_only_weight=0.0)
  loss_fn = jax.jit(objective.make_loss_fn(graphdef, weights))
  losses = np.array([float(loss_fn(params, b, jax.random.key(i))[0])
                     for i, b in enumerate(_all_batches(xl, yl, xu))])
  assert len(losses) == 60
  want = -QuadratureObjective(model).objective(xl, yl, xu, classification_weight=CLS_W)
  assert losses.std() > 0.1  # single batches do differ from J ...
  np.testing.assert_allclose(losses.mean(), want, rtol=1e-5)  # ... but average to it
  # The whole data set as one batch gives -J itself.
  full, _ = loss_fn(params, _batch(xl, yl, xu), jax.random.key(99))
  np.testing.assert_allclose(float(full), want, rtol=1e-5)


@pytest.mark.slow
def test_batch_loss_is_unbiased_over_batches_and_noise():
  """Statistical: with the z-noise on, E over batches and rngs of the loss is -J with
  the expectations E[L], E[U] computed by quadrature in NumPy."""
  model = _model(2)
  graphdef, params = nnx.split(model)
  xl, yl, xu = _data(N_L, N_U, seed=3)
  weights = objective.StreamWeights.from_sizes(
      num_labeled=N_L, num_unlabeled=N_U, num_label_only=0, classification_weight=CLS_W,
      label_only_weight=0.0)
  loss_fn = objective.make_loss_fn(graphdef, weights)
  num_rngs = 400
  batches = list(_all_batches(xl, yl, xu))
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *batches)  # leading axis: the 60 batches
  keys = jax.random.split(jax.random.key(0), (len(batches), num_rngs))
  per_rng = jax.vmap(lambda b, k: loss_fn(params, b, k)[0], (None, 0))
  losses = np.asarray(jax.jit(jax.vmap(per_rng))(stacked, keys), np.float64)  # [60, num_rngs]
  assert losses.shape == (60, num_rngs)
  mean = losses.mean()
  # All batches are enumerated, so only the noise adds variance.
  se = np.sqrt(losses.var(1, ddof=1).mean() / losses.size)
  want = -QuadratureObjective(model).objective(xl, yl, xu, classification_weight=CLS_W)
  assert abs(mean - want) < 4 * se + 1e-4, (mean, want, se)


# ---------------------------------------------------------------------------
# The authors' recipe: batch-mean stream weights, fixed label-only z, Concrete loss
# ---------------------------------------------------------------------------

poster = load_module(POSTER, "poster_config_for_objective")


def weights_for(arg="recipe=authors", **objective_overrides):
  c = poster.get_config(arg)
  c.objective.update(objective_overrides)
  return objective.stream_weights(c, num_labeled=300, num_unlabeled=700, num_label_only=10)


@pytest.mark.parametrize("a,b,c,d", [(0.1, 0.1, 1.0, 0.1), (2.0, 0.5, 3.0, 0.0)])
def test_batch_mean_weights_are_plain_coefficients(a, b, c, d):
  w = weights_for(labeled_weight=a, unlabeled_weight=b, classification_weight=c,
                  label_only_weight=d)
  assert (w.labeled, w.unlabeled, w.label_only) == (a, b, d)
  assert w.classification == pytest.approx(c / a)
  assert w.labeled * w.classification == pytest.approx(c)


def test_m2_forces_label_only_weight_to_zero():
  assert weights_for("recipe=authors,model=m2").label_only == 0.0
  assert weights_for("recipe=ours,model=m2").label_only == 0.0


def test_dataset_weights_by_hand():
  w = weights_for("recipe=ours", label_only_weight=0.5, classification_weight=1.0)
  assert (w.labeled, w.unlabeled) == (pytest.approx(0.3), pytest.approx(0.7))
  assert w.label_only == pytest.approx(0.5 * 10 / 1000)
  assert w.classification == pytest.approx(1000 / 300)


@pytest.mark.parametrize("name", ["batch", "Dataset"])
def test_unknown_stream_weighting_is_named(name):
  with pytest.raises(ValueError, match=repr(name)):
    weights_for(stream_weighting=name)


def test_fixed_label_only_z():
  c = poster.get_config("recipe=authors")
  c.objective.label_only_num_samples = 50
  c.model.latent_dim = 4
  z = objective.fixed_label_only_z(c, seed=3)
  assert z.shape == (10, 50, 4)
  np.testing.assert_array_equal(z, objective.fixed_label_only_z(c, seed=3))
  assert not np.allclose(z, objective.fixed_label_only_z(c, seed=4))
  assert abs(z.mean()) < 0.1 and abs(z.std() - 1.0) < 0.06  # 2000 draws of N(0, 1)
  c.objective.label_only_z = "prior"
  assert objective.fixed_label_only_z(c, seed=3) is None
  c.objective.label_only_z = "fixd"
  with pytest.raises(ValueError, match="'fixd'"):
    objective.fixed_label_only_z(c, seed=3)


@pytest.fixture(scope="module")
def tiny_classifier():
  model = models.M2(num_pixels=5, num_classes=4, latent_dim=2, hidden=(6,),
                    activation="softplus", rngs=nnx.Rngs(2))
  x = (np.random.default_rng(0).random((3, 5)) < 0.5).astype(np.float32)
  return model, x, NumpyM2(model, "softplus").log_q_y_given_x(x)


def np_log_softmax(a):
  return a - np.logaddexp.reduce(a, -1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_concrete_log_prob_closed_form(tiny_classifier, temperature, seed):
  model, x, log_q = tiny_classifier
  y = np.eye(4, dtype=np.float32)[[2, 0, 3]]
  rng = jax.random.key(seed)
  g = np.asarray(jax.random.gumbel(rng, log_q.shape, jnp.float32), np.float64)
  expected = np.sum(y * np_log_softmax((log_q + g) / temperature), -1)
  got = objective.concrete_log_prob(model, jnp.asarray(x), jnp.asarray(y), rng,
                                    temperature=temperature)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def test_concrete_sample_is_one_hot_at_low_temperature(tiny_classifier):
  model, x, log_q = tiny_classifier
  rng = jax.random.key(7)
  g = np.asarray(jax.random.gumbel(rng, log_q.shape, jnp.float32))
  # log s_k for every k, one label at a time with the same rng (same Gumbel draws).
  log_s = np.stack([np.asarray(objective.concrete_log_prob(
      model, jnp.asarray(x), jnp.asarray(np.eye(4, dtype=np.float32)[[k] * 3]), rng,
      temperature=0.01)) for k in range(4)], 1)
  s = np.exp(log_s)
  np.testing.assert_allclose(s.sum(1), 1.0, rtol=1e-4)
  np.testing.assert_array_equal(np.argmax(s, 1), np.argmax(log_q + g, 1))
  assert np.all(s.max(1) > 0.99)


