"""A layer's matmul with bfloat16 operands and float32 sums, as XLA:CPU runs it fast.

`model.matmul_precision='BF16_BF16_F32'` asks every matmul, forward and backward, for
operands rounded to bfloat16 and products summed in float32. A GPU honours the dot
algorithm; XLA:CPU accepts it and computes in float32. It does run a dot of bfloat16
operands with a float32 result (`preferred_element_type`) in YNNPACK, on the CPU's
bfloat16 units (AVX512-BF16, AMX): 480-940 GFLOP/s on the 2-core AMX Xeon where the same
float32 product runs at 150-265 (docs/benchmarks.md, benchmarks/dot_rates.py). So on the CPU the layers take this
module's `dot_general`, and the train step keeps YNNPACK for its dots
(compiler_options). Three things JAX and XLA would otherwise undo:

- Differentiated as is, the dot's transposes pair the float32 cotangent with a bfloat16
  operand, which XLA:CPU computes in float32. The backward products are written here
  (custom_vjp), the cotangent rounded to bfloat16 as the GPU's algorithm does.
- The weight gradient contracts the activations' rows, x^T g. XLA folds a transpose into
  the dot's dimension numbers, and a bfloat16 dot that contracts its left operand's
  leading axis falls back to float32; the transpose is made physical first.
- The bounds are per example and vmapped. vmap runs a custom_vjp's backward function per
  example, which would form every example's weight gradient [I, O] and then sum them;
  `_weight_gradient`'s batching rule contracts all examples' rows in one product instead.
"""

from __future__ import annotations

import jax
from jax import custom_batching
from jax import lax
import jax.numpy as jnp

# The model.matmul_precision this module carries out on the CPU (models, compiler_options).
MATMUL_PRECISION = "BF16_BF16_F32"

# lhs [M, I] . rhs [I, O] -> [M, O]
_ROWS_BY_COLUMNS = (((1,), (0,)), ((), ()))
# g [M, O] . w [I, O] -> [M, I]
_AGAINST_ROWS = (((1,), (1,)), ((), ()))


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                out_sharding=None):
  """nnx.Linear's dot_general: lhs [..., I] . rhs [I, O] -> float32 [..., O].

  Only a Linear layer's contraction (lhs's last axis with rhs's first, no batch axes) is
  accepted. `precision` and `preferred_element_type` are ignored: the operands are
  rounded to bfloat16 and the result is float32 whatever is asked, and its gradients
  are float32 too.
  """
  del precision, preferred_element_type, out_sharding
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  contracts = (tuple(lhs_contract), tuple(rhs_contract))
  if contracts != ((lhs.ndim - 1,), (0,)) or lhs_batch or rhs_batch:
    raise ValueError(f"bfloat16_matmul.dot_general: dimension_numbers={dimension_numbers}; "
                     f"only a Linear layer's ((({lhs.ndim - 1},), (0,)), ((), ())) is supported.")
  rows = lhs.reshape(-1, lhs.shape[-1]).astype(jnp.float32)
  out = _matmul(rows, rhs.astype(jnp.float32))
  return out.reshape(*lhs.shape[:-1], rhs.shape[-1])


def _bfloat16_product(a, b, dimension_numbers):
  return lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), dimension_numbers,
                         preferred_element_type=jnp.float32)


@jax.custom_vjp
def _matmul(x, w):
  """x [M, I] . w [I, O] -> [M, O], float32 operands rounded to bfloat16."""
  return _bfloat16_product(x, w, _ROWS_BY_COLUMNS)


def _matmul_forward(x, w):
  x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  return _bfloat16_product(x16, w16, _ROWS_BY_COLUMNS), (x16, w16)


def _matmul_backward(residuals, g):
  x16, w16 = residuals
  g16 = g.astype(jnp.bfloat16)
  return _bfloat16_product(g16, w16, _AGAINST_ROWS), _weight_gradient(x16, g16, w16)


_matmul.defvjp(_matmul_forward, _matmul_backward)


@custom_batching.custom_vmap
def _weight_gradient(x16, g16, w16):
  """x16 [M, I], g16 [M, O] -> x^T g [I, O], float32. w16 [I, O] is not read: its
  batching says whether a vmapped axis is examples (sum) or replicas (keep)."""
  del w16
  return _bfloat16_product(_physical_transpose(x16), g16, _ROWS_BY_COLUMNS)


@_weight_gradient.def_vmap
def _weight_gradient_batched(axis_size, in_batched, x16, g16, w16):
  x16, g16 = (a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
              for a, batched in zip((x16, g16), in_batched))
  if in_batched[2]:  # each replica its own weights: one gradient each
    return jax.vmap(_weight_gradient.fun)(x16, g16, w16), True
  # vmapped examples sharing the weights: their rows contract into one gradient
  rows = lambda a: a.reshape(-1, a.shape[-1])
  return _weight_gradient(rows(x16), rows(g16), w16), False


def _physical_transpose(a):
  """a [M, I] -> a^T [I, M], written so that XLA cannot fold it into the dot that reads
  it (a 2-D transpose it would); a three-axis transpose of a split axis it keeps."""
  m, i = a.shape
  if i % 2 == 0:
    return jnp.transpose(a.reshape(m, i // 2, 2), (1, 2, 0)).reshape(i, m)
  if m % 2 == 0:
    return jnp.transpose(a.reshape(m // 2, 2, i), (2, 0, 1)).reshape(i, m)
  return a.T  # odd x odd: XLA:CPU computes this one product in float32
