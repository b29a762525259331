r"""GFLOP/s of one layer's three products in float32 and bfloat16, as XLA:CPU compiles them.

  python benchmarks/dot_rates.py [--rows 2100 --inputs 500 --outputs 784] [--repeats 5]

For h [rows, inputs], W [inputs, outputs], g [rows, outputs]: the forward product h W, the
input gradient g Wᵀ and the weight gradient hᵀ g, each compiled alone with XLA's default
options (YNNPACK's fusions on) and timed: in float32; with bfloat16 operands and a bfloat16
result; with bfloat16 operands and a float32 result (`preferred_element_type`); and the
weight gradient once more with hᵀ made physical as bfloat16_matmul does. Prints a table and
one JSON line; each figure is the best of --repeats timings of 10 calls. Timings only.
"""

from __future__ import annotations

import json
import time

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp

from untapped_jax import bfloat16_matmul

_ROWS = flags.DEFINE_integer("rows", 2100, "Rows of h: (labeled + unlabeled) x labels.")
_INPUTS = flags.DEFINE_integer("inputs", 500, "The layer's inputs.")
_OUTPUTS = flags.DEFINE_integer("outputs", 784, "The layer's outputs.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timings of 10 calls; the best is kept.")

PRODUCTS = {  # name: (dimension numbers, operands from (h, w, g))
    "forward h W": ((((1,), (0,)), ((), ())), lambda h, w, g: (h, w)),
    "input gradient g Wᵀ": ((((1,), (1,)), ((), ())), lambda h, w, g: (g, w)),
    "weight gradient hᵀ g": ((((0,), (0,)), ((), ())), lambda h, w, g: (h, g)),
}


def best_seconds(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    for _ in range(10):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / 10)
  return min(times)


def main(argv):
  del argv
  m, i, o = _ROWS.value, _INPUTS.value, _OUTPUTS.value
  keys = jax.random.split(jax.random.key(0), 3)
  h, w, g = (jax.random.normal(k, s) for k, s in zip(keys, [(m, i), (i, o), (m, o)]))
  flops = 2 * m * i * o
  kinds = {"float32": (jnp.float32, None), "bfloat16 result": (jnp.bfloat16, None),
           "float32 result": (jnp.bfloat16, jnp.float32)}
  rates = {}
  for product, (dims, operands) in PRODUCTS.items():
    for kind, (dtype, result) in kinds.items():
      a, b = (x.astype(dtype) for x in operands(h, w, g))
      fn = jax.jit(lambda a, b, dims=dims, result=result: lax.dot_general(
          a, b, dims, preferred_element_type=result))
      rates[(product, kind)] = flops / best_seconds(fn, a, b) / 1e9
  physical = jax.jit(lambda a, b: lax.dot_general(
      bfloat16_matmul._physical_transpose(a), b, (((1,), (0,)), ((), ())),  # pylint: disable=protected-access
      preferred_element_type=jnp.float32))
  rates[("weight gradient hᵀ g", "float32 result, hᵀ physical")] = flops / best_seconds(
      physical, h.astype(jnp.bfloat16), g.astype(jnp.bfloat16)) / 1e9
  print(f"{m} x {i} x {o} on {jax.devices()[0].device_kind}, GFLOP/s (best of "
        f"{_REPEATS.value} x 10 calls)")
  columns = ["float32", "bfloat16 result", "float32 result", "float32 result, hᵀ physical"]
  print("| product | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
  for product in PRODUCTS:
    cells = [f"{rates[(product, c)]:.0f}" if (product, c) in rates else "" for c in columns]
    print(f"| {product} | " + " | ".join(cells) + " |")
  print(json.dumps({f"{p} / {k}": r for (p, k), r in rates.items()}))


if __name__ == "__main__":
  app.run(main)
