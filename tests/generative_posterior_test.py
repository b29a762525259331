"""evaluate/generative_posterior.py against log p(x, y) integrated over a 1-d z by quadrature."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from untapped_jax.bounds import m2
from untapped_jax.evaluate import generative_posterior
from tiny_models import scale_z_rows
from tiny_models import tiny_m2

K, D = 3, 6


def model_and_images():
  model = scale_z_rows(tiny_m2(0, num_pixels=D, num_classes=K, latent_dim=1, hidden=(8,),
                               activation="softplus", bias_seed=11), 3.0)
  # A proposal q(z|x,y) wider than the posterior (std about 1.5), so that 200,000 importance
  # draws put the estimate within about 0.005 nats of the integral.
  last = model.encoder.net.layers[-1]
  last.bias[...] = last.bias[...].at[1].add(1.5)
  x = jnp.asarray(np.random.RandomState(1).rand(4, D) > 0.5, jnp.float32)
  return model, x


def exact_log_joint(model, x, y_index):
  """log p(y) + log int p(x|y,z) N(z; 0, 1) dz on a fine grid of z (float64 sums)."""
  z = np.linspace(-12.0, 12.0, 40001)
  y = jnp.broadcast_to(jax.nn.one_hot(y_index, K), (len(z), K))
  logits = model.decoder(y, jnp.asarray(z[:, None], jnp.float32))
  log_px = np.asarray(jax.vmap(m2.bernoulli_log_prob, (None, 0))(x, logits), np.float64)
  log_integrand = log_px - 0.5 * z ** 2 - 0.5 * np.log(2 * np.pi)
  top = log_integrand.max()
  return np.log(np.trapezoid(np.exp(log_integrand - top), z)) + top - np.log(K)


@pytest.mark.slow
def test_importance_estimate_converges_to_the_integral():
  model, x = model_and_images()
  for i in range(2):
    for k in range(K):
      eps = jax.random.normal(jax.random.key(10 * i + k), (200000, 1))
      got = float(generative_posterior.importance_log_joint(model, x[i], jax.nn.one_hot(k, K),
                                                            eps))
      np.testing.assert_allclose(got, exact_log_joint(model, x[i], k), atol=0.01)


@pytest.mark.slow
def test_one_sample_is_the_elbo_in_expectation_and_below_the_integral():
  # E[log w] = log p(y) + E log p(x|y,z) - KL(q || p): the closed-form KL of the ELBO.
  model, x = model_and_images()
  y = jax.nn.one_hot(1, K)
  eps = jax.random.normal(jax.random.key(3), (20000, 1, 1))
  one_sample = jax.vmap(lambda e: generative_posterior.importance_log_joint(model, x[0], y, e))(eps)
  elbo = m2.labeled_elbo_given_noise(model, x[0], y, eps[:, 0])
  np.testing.assert_allclose(float(one_sample.mean()), float(elbo), atol=0.05)
  assert float(elbo) < exact_log_joint(model, x[0], 1)


@pytest.mark.slow
def test_posterior_is_normalised_and_matches_the_exact_one():
  model, x = model_and_images()
  for i in range(len(x)):
    exact = np.array([exact_log_joint(model, x[i], k) for k in range(K)])
    exact -= np.logaddexp.reduce(exact)
    got = np.asarray(generative_posterior.posterior_log_probs(
        model, x[i], jax.random.key(i), num_samples=200000), np.float64)
    np.testing.assert_allclose(np.logaddexp.reduce(got), 0.0, atol=1e-5)
    np.testing.assert_allclose(got, exact, atol=0.01)


@pytest.mark.slow
def test_predictions_are_the_argmaxes_batch_by_batch():
  model, x = model_and_images()
  graphdef, params = nnx.split(model)
  posterior, classifier = generative_posterior.predictions(
      graphdef, params, np.asarray(x), jax.random.key(0), num_samples=200000, batch_size=3)
  exact = np.array([[exact_log_joint(model, x[i], k) for k in range(K)] for i in range(len(x))])
  top2 = np.sort(exact, 1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > 0.01  # rows the estimate's noise cannot reorder
  assert clear.sum() >= 3
  np.testing.assert_array_equal(posterior[clear], exact.argmax(1)[clear])
  np.testing.assert_array_equal(classifier, np.asarray(model.classifier(x)).argmax(1))
