"""Held-out evaluation (accuracy of q(y|x), M2's bounds) against the NumPy reference,
on real MNIST test images."""


from flax import nnx
import numpy as np
import pytest

from numpy_reference import NumpyM2
from numpy_reference import np_bernoulli
from untapped_jax import models
from untapped_jax.configs import default
from untapped_jax.data import mnist
from untapped_jax.data import splits as splits_lib
from untapped_jax.evaluate import heldout

from real_mnist import REAL_DATA_DIR as DATA_DIR, needs_mnist

pytestmark = needs_mnist
N, DRAWS = 1000, 8


@pytest.fixture(scope="module")
def setup():
  config = default.get_config()
  config.model.hidden = (32,)
  config.model.latent_dim = 4
  # A seed whose fresh classifier predicts four digits on these images (most seeds
  # predict one or two), so the accuracy check compares more than a constant.
  model = models.build(config.model, seed=8)
  graphdef, params = nnx.split(model)
  data = mnist.load_folder(DATA_DIR)
  split = splits_lib.Split(images=data["test_images"][:N], labels=data["test_labels"][:N])
  return config, model, graphdef, params, split


def run(setup, **kwargs):
  config, _, graphdef, params, split = setup
  args = dict(batch_size=250, binarization="static", seed=0)
  return heldout.evaluate(graphdef, params, split, **{**args, **kwargs})


def reference_bounds(model, activation, x, labels, rs):
  """Monte Carlo (DRAWS reparameterised draws per term) labeled ELBO and unlabeled
  bound of each image, plus the standard deviation of one draw, in float64 NumPy."""
  ref = NumpyM2(model, activation)
  eye = np.eye(ref.num_classes)
  log_q = ref.log_q_y_given_x(x)  # [N, K]
  elbos = np.zeros((len(x), ref.num_classes, DRAWS))
  for k in range(ref.num_classes):
    mean, log_var = ref.encode(x, np.broadcast_to(eye[k], (len(x), ref.num_classes)))
    z = mean[:, None] + np.exp(0.5 * log_var)[:, None] * rs.randn(len(x), DRAWS, ref.latent_dim)
    log_px = np_bernoulli(x[:, None], ref.decoder_logits(eye[k], z))  # [N, DRAWS]
    kl = 0.5 * np.sum(np.exp(log_var) + mean ** 2 - 1.0 - log_var, -1)
    elbos[:, k] = log_px - kl[:, None] + np.log(1.0 / ref.num_classes)
  labeled = elbos[np.arange(len(x)), labels]  # [N, DRAWS]
  q = np.exp(log_q)
  unlabeled = np.einsum("nk,nkd->nd", q, elbos) - np.sum(q * log_q, -1)[:, None]
  return labeled, unlabeled, log_q


@pytest.mark.slow
def test_accuracy_and_bounds_match_the_numpy_reference(setup):
  config, model, _, _, split = setup
  result = run(setup)
  x = (split.images / 255.0 > 0.5).astype(np.float64)  # 'static' binarisation
  labeled, unlabeled, log_q = reference_bounds(model, config.model.activation, x,
                                               split.labels, np.random.RandomState(0))
  assert result["accuracy"] == pytest.approx(np.mean(np.argmax(log_q, -1) == split.labels),
                                             abs=1.5 / N)  # a float32 near-tie at most
  assert len(np.unique(np.argmax(log_q, -1))) >= 3  # not one constant prediction
  for name, draws in (("labeled_elbo", labeled), ("unlabeled_bound", unlabeled)):
    # One draw per image against the DRAWS-draw mean: within 5 standard errors.
    # The images are the same, so only the spread within an image counts.
    se = np.sqrt(np.mean(np.var(draws, -1)) * (1 + 1 / DRAWS) / N)
    assert abs(result[name] - draws.mean()) < 4 * se, (name, result[name], draws.mean(), se)


@pytest.mark.slow
def test_evaluation_is_repeatable_and_accuracy_ignores_batching(setup):
  a, b = run(setup), run(setup)
  assert a == b
  assert run(setup, batch_size=N)["accuracy"] == a["accuracy"]
  assert run(setup, batch_size=500)["accuracy"] == a["accuracy"]
