"""bfloat16_matmul: values and parameter gradients against NumPy float64 products of the
operands rounded to bfloat16, alone, vmapped over examples and over replicas; the policy
reaching the layers and, on the CPU, YNNPACK's bfloat16 dots."""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from untapped_jax import bfloat16_matmul
from untapped_jax import models


def bf16(a) -> np.ndarray:
  """a rounded to bfloat16 (nearest even), as float64."""
  return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def layer(x, w):
  """x [..., I] . w [I, O] as nnx.Linear calls its dot_general."""
  return bfloat16_matmul.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def problem(key, *shape_x, out=7):
  kx, kw, kc = jax.random.split(jax.random.key(key), 3)
  x = jax.random.normal(kx, shape_x, jnp.float32)
  w = jax.random.normal(kw, (shape_x[-1], out), jnp.float32)
  # The cotangent of sum(layer(x, w) * c): c itself, rounded to bfloat16 by the backward
  # products.
  c = jax.random.normal(kc, (*shape_x[:-1], out), jnp.float32)
  return x, w, c


def assert_close_to(got, expected, scale):
  """float32 sums of bfloat16 products against their float64 value: float32 rounding of
  the sum, far below bfloat16's (2^-8 relative)."""
  np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=0,
                             atol=1e-5 * scale)


@pytest.mark.parametrize("shape_x", [(5, 6), (3, 5)])  # even I; odd M and I (a.T)
def test_values_and_gradients_are_bfloat16_products_summed_in_float32(shape_x):
  x, w, c = problem(0, *shape_x)
  out, vjp = jax.vjp(jax.jit(layer), x, w)
  dx, dw = vjp(c)
  scale = np.abs(bf16(x)).max() * np.abs(bf16(w)).max() * shape_x[-1]
  assert out.dtype == dx.dtype == dw.dtype == jnp.float32
  assert_close_to(out, bf16(x) @ bf16(w), scale)
  assert_close_to(dx, bf16(c) @ bf16(w).T, scale)
  assert_close_to(dw, bf16(x).T @ bf16(c), scale)
  # ... and not float32 products: rounding the operands moved the result.
  assert np.abs(np.asarray(out, np.float64) - np.asarray(x, np.float64) @ np.asarray(w)
                ).max() > 1e-3 * np.abs(out).max()


def test_examples_vmapped_over_shared_weights_sum_into_one_gradient():
  """Per-example inputs [K, I] vmapped over B examples, as the bounds call the layers: the
  weight gradient is the sum over all B K rows."""
  x, w, c = problem(1, 4, 3, 6)  # B=4 examples of K=3 rows
  loss = lambda x, w: jnp.sum(jax.vmap(layer, (0, None))(x, w) * c)
  dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
  rows = lambda a: a.reshape(-1, a.shape[-1])
  scale = np.abs(bf16(x)).max() * np.abs(bf16(w)).max() * 12
  assert dw.shape == w.shape
  assert_close_to(dw, rows(bf16(x)).T @ rows(bf16(c)), scale)
  assert_close_to(dx, bf16(c) @ bf16(w).T, scale)
  # One product over all rows: no example's own [I, O] gradient is formed to be summed.
  avals = {str(v.aval) for eqn in jax.make_jaxpr(jax.grad(loss, argnums=1))(x, w).eqns
           for v in eqn.outvars}
  assert not [a for a in avals if "[4,6,7]" in a], avals


def test_replicas_vmapped_over_their_own_weights_keep_one_gradient_each():
  """A population: R=2 replicas, each its own weights, each vmapping its examples."""
  xs, ws, cs = zip(*(problem(k, 4, 3, 6) for k in (2, 3)))
  x, w, c = map(jnp.stack, (xs, ws, cs))

  def replica_loss(x, w, c):
    return jnp.sum(jax.vmap(layer, (0, None))(x, w) * c)

  dw = jax.jit(jax.vmap(jax.grad(replica_loss, argnums=1)))(x, w, c)
  assert dw.shape == w.shape
  rows = lambda a: a.reshape(-1, a.shape[-1])
  for r in range(2):
    scale = np.abs(bf16(x[r])).max() * np.abs(bf16(w[r])).max() * 12
    assert_close_to(dw[r], rows(bf16(x[r])).T @ rows(bf16(c[r])), scale)


def test_only_a_linear_layers_contraction_is_accepted():
  x = jnp.ones((2, 3))
  with pytest.raises(ValueError, match=r"dimension_numbers=.*only a Linear layer's"):
    bfloat16_matmul.dot_general(x, jnp.ones((2, 4)), (((0,), (0,)), ((), ())))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's implementation")
def test_the_policy_on_the_cpu_rounds_every_layer_and_moves_the_bound_little():
  """matmul_precision='BF16_BF16_F32' on the CPU: every layer takes the module's
  dot_general, parameters stay float32, and the unlabeled bound of a full-size untrained
  model moves by a small fraction of a nat from float32's, but moves."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from untapped_jax.bounds import m2  # pylint: disable=g-import-not-at-top
  from untapped_jax.configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  graphdef32, params = nnx.split(models.build(c.model, seed=0))
  c.model.matmul_precision = "BF16_BF16_F32"
  model16 = models.build(c.model, seed=0)
  linears = [m for _, m in nnx.iter_graph(model16) if isinstance(m, nnx.Linear)]
  assert len(linears) == 7
  assert all(m.dot_general is bfloat16_matmul.dot_general for m in linears)
  graphdef16, params16 = nnx.split(model16)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params16)):
    np.testing.assert_array_equal(a, b)
  x = jax.random.bernoulli(jax.random.key(1), 0.2, (32, 784)).astype(jnp.float32)
  keys = jax.random.split(jax.random.key(2), len(x))

  @functools.partial(jax.jit, static_argnums=0)
  def bound(graphdef):
    model = nnx.merge(graphdef, params)
    return jax.vmap(lambda xx, k: m2.unlabeled_bound_terms(model, xx, k)["bound"])(x, keys)

  b32, b16 = bound(graphdef32), bound(graphdef16)
  assert float(jnp.mean(b32)) < -100
  np.testing.assert_allclose(b16, b32, rtol=1e-3)
  assert not np.array_equal(b16, b32)
