"""models.softplus: values and derivatives against NumPy's float64 closed forms."""

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from untapped_jax import models

# Both signs, zero, the float32 overflow range of exp, and tiny magnitudes.
X = np.concatenate([np.linspace(-30, 30, 601), [-200.0, -88.0, -1e-7, 0.0, 1e-7, 88.0, 200.0]]
                   ).astype(np.float32)


def test_softplus_values_match_logaddexp():
  expected = np.logaddexp(0.0, X.astype(np.float64))
  got = np.asarray(jax.jit(models.softplus)(X), np.float64)
  np.testing.assert_allclose(got, expected, rtol=2e-7, atol=1e-30)
  assert np.all(np.isfinite(got))


def test_softplus_derivative_is_the_sigmoid():
  grad = jax.jit(jax.vmap(jax.grad(models.softplus)))(X)
  expected = 1.0 / (1.0 + np.exp(-X.astype(np.float64)))
  np.testing.assert_allclose(np.asarray(grad, np.float64), expected, rtol=1e-6, atol=1e-30)


@pytest.mark.slow
def test_softplus_second_order_gradients():
  jtu.check_grads(models.softplus, (jnp.asarray([-3.0, -0.5, 0.25, 2.0]),), order=2,
                  modes=("fwd", "rev"))
