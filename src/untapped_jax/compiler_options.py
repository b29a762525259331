"""XLA compile options of the train step: on the CPU, XLA's own fusion emitter.

XLA:CPU (jaxlib 0.10) hands dots, reductions and some elementwise fusions to YNNPACK by
default. On the Intel Xeon (AVX-512) this project's CPU numbers come from, keeping them in
XLA's own emitter made the M2 step 7-17% faster in every paired comparison over three
sittings, at float32 rounding's distance in the loss (docs/benchmarks.md,
`python benchmarks/paired_steps.py`). So `train.xla_cpu_ynnpack=False`, the default,
compiles the train step with YNNPACK's fusions off; True keeps XLA's default.

Under `model.matmul_precision='BF16_BF16_F32'` the layers' dots take bfloat16 operands
and float32 results (bfloat16_matmul), which only YNNPACK runs on the CPU's bfloat16
units; XLA's own emitter computes them in float32. So that policy compiles the step with
YNNPACK for each dot alone (LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT) and the rest in XLA.

The option is passed to jax.jit, not through XLA_FLAGS, so it reaches the train step only,
and it is left out where it would not apply or could not be read: off the CPU, where
XLA_FLAGS already sets it (the user's choice stands), and under an XLA that does not know
it (checked once with a one-line program; an unknown compile option is an error).
"""

from __future__ import annotations

import functools
import os

import jax

from untapped_jax import bfloat16_matmul

YNNPACK_FUSIONS = "xla_cpu_experimental_ynn_fusion_type"
YNNPACK_DOTS_ALONE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def train_step_options(*, xla_cpu_ynnpack: bool,
                       matmul_precision: str = "default") -> dict[str, str] | None:
  """The compiler_options for jax.jit of the train step, or None for XLA's defaults."""
  if xla_cpu_ynnpack or jax.default_backend() != "cpu":
    return None
  if YNNPACK_FUSIONS in os.environ.get("XLA_FLAGS", ""):
    return None
  bfloat16_dots = matmul_precision == bfloat16_matmul.MATMUL_PRECISION
  options = {YNNPACK_FUSIONS: YNNPACK_DOTS_ALONE if bfloat16_dots else ""}
  return options if _accepted(tuple(options.items())) else None


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options))(0.0)
  except jax.errors.JaxRuntimeError:
    return False
  return True
