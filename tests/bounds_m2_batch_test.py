"""bounds/m2_batch.py, the training step's fast path, against the per-example reference.

The reference is bounds/m2.py's per-example functions (themselves tested against closed
forms and brute-force enumeration in bounds_m2_test.py), called with the keys the fast
path derives its noise from: values and parameter gradients must agree to float32
rounding, for soft and one-hot labels, several noise draws, deeper networks, the full-size
model on MNIST images, and the bfloat16 compute policy.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from untapped_jax import models
from untapped_jax import objective
from untapped_jax.bounds import m2
from untapped_jax.bounds import m2_batch
from untapped_jax.configs import default
from untapped_jax.data import mnist

from real_mnist import DATA_DIR
from tiny_models import tiny_m2

D, K, Z = 12, 4, 3


def _model(seed: int, *, hidden=(9, 7), activation="softplus", dtype=None) -> models.M2:
  """A small M2 with two hidden layers and non-zero random biases (the default init's
  are zero, which would hide a missing or doubled bias)."""
  return tiny_m2(seed, num_pixels=D, num_classes=K, latent_dim=Z, hidden=hidden,
                 activation=activation, bias_seed=300 + seed, dtype=dtype)


def _images(n: int, seed: int) -> np.ndarray:
  return (np.random.RandomState(seed).rand(n, D) < 0.4).astype(np.float32)


def _reference_unlabeled(model, x, rng, num_samples):
  keys = jax.random.split(rng, len(x))
  return jax.vmap(lambda xx, k: m2.unlabeled_bound_terms(
      model, xx, k, num_samples=num_samples))(x, keys)


def _reference_labeled(model, x, y, rng, num_samples):
  keys = jax.random.split(rng, len(x))
  return jax.vmap(lambda xx, yy, k: m2.labeled_elbo(model, xx, yy, k,
                                                    num_samples=num_samples))(x, y, keys)


def _fast_unlabeled(model, x, rng, num_samples):
  eps = m2_batch.unlabeled_noise(rng, len(x), num_classes=model.num_classes,
                                 num_samples=num_samples, latent_dim=model.latent_dim)
  return m2_batch.unlabeled_terms(model, x, eps)


def _fast_labeled(model, x, y, rng, num_samples):
  eps = m2_batch.labeled_noise(rng, len(x), num_samples=num_samples,
                               latent_dim=model.latent_dim)
  return m2_batch.labeled_elbo(model, x, y, eps)


def test_noise_is_the_reference_keys_draws():
  rng = jax.random.key(4)
  eps = m2_batch.unlabeled_noise(rng, 3, num_classes=K, num_samples=2, latent_dim=Z)
  assert eps.shape == (3, K, 2, Z)
  for b, key_b in enumerate(jax.random.split(rng, 3)):
    for k, key_k in enumerate(jax.random.split(key_b, K)):
      np.testing.assert_array_equal(eps[b, k], jax.random.normal(key_k, (2, Z)))


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("hidden,activation", [((9, 7), "softplus"), ((8,), "tanh")])
def test_unlabeled_terms_match_the_reference(num_samples, hidden, activation):
  model = _model(0, hidden=hidden, activation=activation)
  x, rng = jnp.asarray(_images(6, 1)), jax.random.key(2)
  fast = jax.jit(lambda x, r: _fast_unlabeled(model, x, r, num_samples))(x, rng)
  ref = jax.jit(lambda x, r: _reference_unlabeled(model, x, r, num_samples))(x, rng)
  assert fast.bound.shape == (6,) and fast.elbos.shape == fast.log_q.shape == (6, K)
  np.testing.assert_allclose(fast.bound, ref["bound"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fast.elbos, ref["elbos"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fast.log_q, ref["log_q"], rtol=1e-6, atol=1e-6)
  # The draws matter: other keys give other ELBOs (the test would notice ignored noise).
  other = jax.jit(lambda x, r: _fast_unlabeled(model, x, r, num_samples))(x, jax.random.key(3))
  assert np.max(np.abs(np.asarray(other.elbos - fast.elbos))) > 1e-3


@pytest.mark.parametrize("soft", [False, True])
def test_labeled_elbo_matches_the_reference(soft):
  model = _model(1)
  rs = np.random.RandomState(5)
  y = (rs.dirichlet(np.ones(K), 5) if soft else np.eye(K)[rs.randint(0, K, 5)]
       ).astype(np.float32)
  x, rng = jnp.asarray(_images(5, 2)), jax.random.key(7)
  fast = jax.jit(lambda x, y, r: _fast_labeled(model, x, y, r, 2))(x, jnp.asarray(y), rng)
  ref = jax.jit(lambda x, y, r: _reference_labeled(model, x, y, r, 2))(x, jnp.asarray(y), rng)
  np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)


def _terms_objective(terms_fn, graphdef, x_l, y_l, x_u, rng):
  """A scalar touching every output of the terms with distinct weights."""
  c = jnp.arange(1.0, K + 1.0)

  def f(params):
    t = terms_fn(nnx.merge(graphdef, params),
                 {"labeled": {"x": x_l, "y": y_l}, "unlabeled": {"x": x_u}}, rng,
                 num_samples=2)
    return (jnp.sum(t["labeled_elbo"]) + 0.3 * jnp.sum(t["log_q_y"])
            + jnp.sum(t["unlabeled_bound"]) + 0.1 * jnp.sum(t["unlabeled_elbos"] * c)
            + 0.2 * jnp.sum(t["unlabeled_log_q"] * c))

  return f


def _assert_gradients_agree(fast, ref, rtol):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(fast), jax.tree.leaves(ref)):
    scale = float(np.max(np.abs(np.asarray(b))))
    assert scale > 0, path
    np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, rtol=0,
                               atol=rtol, err_msg=jax.tree_util.keystr(path))


def test_parameter_gradients_match_the_reference():
  graphdef, params = nnx.split(_model(2))
  rs = np.random.RandomState(8)
  x_l, x_u = jnp.asarray(_images(4, 3)), jnp.asarray(_images(7, 4))
  y_l = jnp.asarray(np.eye(K, dtype=np.float32)[rs.randint(0, K, 4)])
  args = (graphdef, x_l, y_l, x_u, jax.random.key(9))
  fast = jax.jit(jax.value_and_grad(_terms_objective(objective.batch_terms, *args)))(params)
  ref = jax.jit(jax.value_and_grad(_terms_objective(objective.per_example_batch_terms,
                                                    *args)))(params)
  np.testing.assert_allclose(fast[0], ref[0], rtol=1e-5)
  _assert_gradients_agree(fast[1], ref[1], rtol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("label_only", ["class_balance", "batch_posterior"])
def test_loss_and_gradients_match_through_the_batch_level_label_only_terms(label_only):
  """make_loss_fn's fast and per-example paths with the objectives that reuse the
  unlabeled ELBOs and log q(y|x): the same loss, metrics and gradients."""
  graphdef, params = nnx.split(_model(3))
  rs = np.random.RandomState(10)
  batch = {"labeled": {"x": jnp.asarray(_images(4, 5)),
                       "y": jnp.asarray(np.eye(K, dtype=np.float32)[rs.randint(0, K, 4)])},
           "unlabeled": {"x": jnp.asarray(_images(8, 6))},
           "label_only": {"y": jnp.asarray(np.eye(K, dtype=np.float32)[[0, 1, 3]])}}
  weights = objective.StreamWeights.from_sizes(
      num_labeled=40, num_unlabeled=80, num_label_only=30, classification_weight=0.1,
      label_only_weight=2.0)
  settings = objective.LabelOnlySettings(objective=label_only, image_prior="uniform").check()
  out = {}
  for per_example in (False, True):
    loss_fn = objective.make_loss_fn(graphdef, weights, label_only=settings,
                                     per_example=per_example)
    out[per_example] = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, batch, jax.random.key(11))
  (loss, metrics), grads = out[False]
  (ref_loss, ref_metrics), ref_grads = out[True]
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert metrics.keys() == ref_metrics.keys()
  for name in metrics:
    np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, atol=1e-5,
                               err_msg=name)
  _assert_gradients_agree(grads, ref_grads, rtol=2e-5)


def _mnist_batch(n_l: int, n_u: int):
  data = mnist.load_folder(DATA_DIR)
  x = (data["train_images"][:n_l + n_u] >= 128).astype(np.float32)
  y = np.eye(10, dtype=np.float32)[data["train_labels"][:n_l]]
  return {"labeled": {"x": jnp.asarray(x[:n_l]), "y": jnp.asarray(y)},
          "unlabeled": {"x": jnp.asarray(x[n_l:])}}


@pytest.mark.slow
def test_full_size_model_on_mnist_values_and_gradients():
  """The default networks (784-500-50, softplus) on MNIST images: the shapes of a run."""
  config = default.get_config()
  graphdef, params = nnx.split(models.build(config.model, seed=0))
  batch = _mnist_batch(8, 24)
  rng = jax.random.key(12)

  def total(terms_fn):
    def f(p):
      t = terms_fn(nnx.merge(graphdef, p), batch, rng)
      return jnp.sum(t["labeled_elbo"]) + jnp.sum(t["unlabeled_bound"]), t
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  (value, terms), grads = total(objective.batch_terms)
  (ref_value, ref_terms), ref_grads = total(objective.per_example_batch_terms)
  assert float(jnp.mean(terms["unlabeled_bound"])) < -100  # a real bound, not a zero
  for name in ("labeled_elbo", "unlabeled_bound", "unlabeled_elbos", "unlabeled_log_q"):
    np.testing.assert_allclose(terms[name], ref_terms[name], rtol=1e-5, atol=1e-4,
                               err_msg=name)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  _assert_gradients_agree(grads, ref_grads, rtol=1e-4)


@pytest.mark.slow
def test_bfloat16_fast_path_stays_within_the_policy_tolerance():
  """Under model.compute_dtype='bfloat16' the fast path's bounds are float32 and within
  1e-3 relative of the float32 reference, as the reference's own bfloat16 path is
  (models_test)."""
  config = default.get_config()
  params = nnx.split(models.build(config.model, seed=0))[1]
  config.model.compute_dtype = "bfloat16"
  graphdef16 = nnx.split(models.build(config.model, seed=0))[0]
  config.model.compute_dtype = "float32"
  graphdef32 = nnx.split(models.build(config.model, seed=0))[0]
  batch = _mnist_batch(8, 24)
  rng = jax.random.key(13)
  fast16 = jax.jit(lambda: objective.batch_terms(nnx.merge(graphdef16, params), batch, rng))()
  ref32 = jax.jit(lambda: objective.per_example_batch_terms(
      nnx.merge(graphdef32, params), batch, rng))()
  for name in ("labeled_elbo", "unlabeled_bound"):
    assert fast16[name].dtype == jnp.float32, name
    np.testing.assert_allclose(fast16[name], ref32[name], rtol=1e-3, err_msg=name)
