"""models.softplus against NumPy's float64 closed forms; the bfloat16 compute policy; the
authors' initialiser."""

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from untapped_jax import models

from repo_files import POSTER
from repo_files import load_module

# Both signs, zero, the float32 overflow range of exp, and tiny magnitudes.
X = np.concatenate([np.linspace(-30, 30, 601), [-200.0, -88.0, -1e-7, 0.0, 1e-7, 88.0, 200.0]]
                   ).astype(np.float32)


def test_softplus_values_match_logaddexp():
  """Relative float32 precision where softplus(x) >= 1/2 (x > -0.44); below, float32's
  absolute precision next to 1 (log(1 + e) rounds 1 + e), and never negative."""
  expected = np.logaddexp(0.0, X.astype(np.float64))
  got = np.asarray(jax.jit(models.softplus)(X), np.float64)
  large = expected >= 0.5
  assert large.sum() > 250 and (~large).sum() > 250
  np.testing.assert_allclose(got[large], expected[large], rtol=2e-7)
  np.testing.assert_array_less(np.abs(got - expected)[~large], 2.0**-23)
  assert np.all(np.isfinite(got)) and np.all(got >= 0)


def test_softplus_derivative_is_the_sigmoid():
  grad = jax.jit(jax.vmap(jax.grad(models.softplus)))(X)
  expected = 1.0 / (1.0 + np.exp(-X.astype(np.float64)))
  np.testing.assert_allclose(np.asarray(grad, np.float64), expected, rtol=1e-6, atol=1e-30)


@pytest.mark.slow
def test_softplus_second_order_gradients():
  jtu.check_grads(models.softplus, (jnp.asarray([-3.0, -0.5, 0.25, 2.0]),), order=2,
                  modes=("fwd", "rev"))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters_outputs_and_bounds():
  """The same float32 parameters computing in bfloat16: every output is float32 and the
  unlabeled bound of a full-size model moves by well under a nat of its ~690."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from untapped_jax.bounds import m2  # pylint: disable=g-import-not-at-top
  from untapped_jax.configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  graphdef32, params = nnx.split(models.build(c.model, seed=0))
  c.model.compute_dtype = "bfloat16"
  graphdef16, params16 = nnx.split(models.build(c.model, seed=0))
  assert {leaf.dtype for leaf in jax.tree.leaves(params16)} == {jnp.dtype(jnp.float32)}
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params16)):
    np.testing.assert_array_equal(a, b)  # the dtype changes the computation only
  x = jax.random.bernoulli(jax.random.key(1), 0.2, (64, 784)).astype(jnp.float32)
  keys = jax.random.split(jax.random.key(2), len(x))

  def bound(graphdef):
    model = nnx.merge(graphdef, params)
    assert model.classifier(x).dtype == jnp.float32
    assert model.encoder(x, jnp.eye(10)[jnp.zeros(64, int)])[1].dtype == jnp.float32
    return jax.vmap(lambda xx, k: m2.unlabeled_bound_terms(model, xx, k)["bound"])(x, keys)

  b32, b16 = jax.jit(lambda: bound(graphdef32))(), jax.jit(lambda: bound(graphdef16))()
  assert b16.dtype == jnp.float32
  assert float(jnp.mean(b32)) < -100
  np.testing.assert_allclose(b16, b32, rtol=1e-3)  # ~0.7 nats here; measured ~0.05
  assert not np.array_equal(b16, b32)  # it really computed in bfloat16


def test_unknown_compute_dtype_is_named():
  with pytest.raises(ValueError, match="model.compute_dtype='float16'"):
    models.compute_dtype("float16")


@pytest.mark.parametrize("name,marker", [
    ("default", "precision = [DEFAULT, DEFAULT]"), ("float32", "precision = [HIGHEST, HIGHEST]"),
    ("tensorfloat32", "precision = [HIGH, HIGH]"),
    ("BF16_BF16_F32_X3", "lhs_precision_type = bf16, rhs_precision_type = bf16"),
])
def test_matmul_precision_reaches_every_matmul_forward_and_backward(name, marker):
  """model.matmul_precision on every dot of the unlabeled bound's parameter gradient (all
  three networks, their transposes in the backward pass), read off the lowered program:
  XLA:CPU computes every level in float32, so the values cannot show it."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from untapped_jax.bounds import m2  # pylint: disable=g-import-not-at-top
  from untapped_jax.configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model.hidden, c.model.latent_dim, c.model.matmul_precision = (16,), 4, name
  graphdef, params = nnx.split(models.build(c.model, seed=0))
  x = jnp.full((3, 784), 0.5)

  def bound(p):
    model = nnx.merge(graphdef, p)
    return jnp.sum(jax.vmap(lambda xx: m2.unlabeled_bound(model, xx, jax.random.key(0)))(x))

  dots = [line for line in jax.jit(jax.grad(bound)).lower(params).as_text().splitlines()
          if "stablehlo.dot_general" in line]
  assert len(dots) >= 18  # 6 layers: a forward dot and two backward dots each
  for line in dots:
    assert marker in line, line


def test_unknown_matmul_precision_is_named():
  for bad in ("float16", "DEFAULT", "TF32"):
    with pytest.raises(ValueError, match=f"model.matmul_precision='{bad}'; expected 'default'"):
      models.matmul_precision(bad)


# The authors' recipe's initialiser: N(0, init_stddev^2) kernels, zero biases.

poster = load_module(POSTER, "poster_config_for_models")


@pytest.mark.slow
def test_normal_kernel_init_on_a_full_size_model():
  c = poster.get_config("recipe=authors").model
  model = models.build(c, seed=0)
  for layer in (model.classifier.net.layers[0], model.encoder.from_x):
    kernel = np.asarray(layer.kernel[...])
    assert kernel.shape == (784, 500)
    assert abs(kernel.std() - 1e-3) < 2e-5 and abs(kernel.mean()) < 1e-5
    np.testing.assert_array_equal(np.asarray(layer.bias[...]), 0.0)
  small = poster.get_config("recipe=authors").model
  small.update(hidden=(64,), init_stddev=0.05)
  kernel = np.asarray(models.build(small, seed=0).decoder.net.layers[-1].kernel[...])
  assert kernel.shape == (64, 784) and abs(kernel.std() - 0.05) < 1e-3
  small.update(kernel_init="lecun_normal")  # flax's default: std 1/sqrt(fan_in)
  lecun = np.asarray(models.build(small, seed=0).classifier.net.layers[0].kernel[...])
  assert lecun.std() == pytest.approx(1 / np.sqrt(784), rel=0.03)


def test_torch_linear_init_is_pytorchs_uniform_at_each_layers_fan_in():
  # nn.Linear(fan_in, out).reset_parameters(): weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
  # so each has standard deviation 1/sqrt(3 fan_in). The encoder's first layer is one
  # nn.Linear over [x, y] in PyTorch: both of our halves use its fan-in 784 + 10.
  from untapped_jax.configs import default
  c = default.get_config().model
  c.kernel_init = "torch_linear"
  model = models.build(c, seed=0)
  layers = {
      "classifier 784->500": (model.classifier.net.layers[0], 784),
      "classifier 500->10": (model.classifier.net.layers[1], 500),
      "encoder x": (model.encoder.from_x, 794),
      "encoder y": (model.encoder.from_y, 794),
      "encoder 500->100": (model.encoder.net.layers[0], 500),
      "decoder 60->500": (model.decoder.net.layers[0], 60),
      "decoder 500->784": (model.decoder.net.layers[1], 500),
  }
  for name, (layer, fan_in) in layers.items():
    params = [np.asarray(layer.kernel[...])]
    if layer.bias is not None:
      params.append(np.asarray(layer.bias[...]))
    for p in params:
      bound = 1 / np.sqrt(fan_in)
      assert np.abs(p).max() <= bound, name
      # A uniform sample's std has relative standard error sqrt((9/5 - 1) / (4 n)): 4 of them.
      assert p.std() == pytest.approx(bound / np.sqrt(3), rel=4 * np.sqrt(0.2 / p.size)), name
      assert np.abs(p).max() > 0.9 * bound, name
  assert model.encoder.from_y.bias is None
  # The other initialisers keep flax's zero biases.
  c.kernel_init = "lecun_normal"
  np.testing.assert_array_equal(np.asarray(models.build(c, seed=0).decoder.net.layers[0].bias[...]), 0.0)


@pytest.mark.parametrize("name", ["glorot", "Normal"])
def test_unknown_kernel_init_is_named(name):
  with pytest.raises(ValueError, match=repr(name)):
    models.kernel_initializer(name, 1e-3)


