"""NNX networks of M2: classifier q(y|x), encoder q(z|x,y), decoder p(x|y,z).

All three are MLPs that work on one example (x [D], y [K], z [Z]) or a batch;
the bounds are written per example and vmapped.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from untapped_jax import bfloat16_matmul
from untapped_jax import rng as rng_lib

@jax.custom_jvp
def softplus(x: jax.Array) -> jax.Array:
  """log(1 + exp(x)), elementwise.

  max(x, 0) + log(1 + e) with e = exp(-|x|) in (0, 1]. log(1 + e) rather than log1p(e),
  which costs XLA:CPU 1.4x as much: for x < 0 the value is then exact to float32's
  absolute precision next to 1 (under 1.2e-7; relative precision is lost as it goes to 0),
  which is all its uses see: an activation beside others of order one, a Bernoulli term
  in a sum of hundreds (3% of an M2 step, docs/benchmarks.md).
  Its derivative sigmoid(x) is formed from the forward pass's e, so the backward pass
  costs one division and no transcendental; most of an M2 step's elementwise work is
  softplus.
  """
  return jnp.maximum(x, 0.0) + jnp.log(1.0 + jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  e = jnp.exp(-jnp.abs(x))
  sigmoid = jnp.where(x >= 0, 1.0, e) / (1.0 + e)
  return jnp.maximum(x, 0.0) + jnp.log(1.0 + e), sigmoid * dx


ACTIVATIONS = {"softplus": softplus, "relu": jax.nn.relu, "tanh": jnp.tanh,
               "gelu": jax.nn.gelu, "elu": jax.nn.elu}


def activation_fn(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"model.activation={name!r}; expected one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


KERNEL_INITS = ("lecun_normal", "normal", "torch_linear")


class TorchLinearInit:
  """PyTorch's nn.Linear default: kernel and bias each U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
  fan_in the layer's input width (jonemeth's ssl-vae, any PyTorch M2). Unlike flax's
  initializers it needs the fan-in of the layer as PyTorch sees it, which for the encoder's
  split first layer is D + K, not the width of each half."""

  def __call__(self, fan_in: int) -> dict:
    bound = 1.0 / math.sqrt(fan_in)
    uniform = functools.partial(_uniform, bound=bound)
    return {"kernel_init": uniform, "bias_init": uniform}


def _uniform(key, shape, dtype=jnp.float32, *, bound: float):
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def kernel_initializer(name: str = "lecun_normal", stddev: float = 1e-3):
  """flax's default (LeCun normal), N(0, stddev^2) as the authors' Theano code, or
  PyTorch's nn.Linear default (a TorchLinearInit, which sets the biases too)."""
  if name == "lecun_normal":
    return nnx.initializers.lecun_normal()
  if name == "normal":
    return functools.partial(_scaled_normal, stddev=stddev)
  if name == "torch_linear":
    return TorchLinearInit()
  raise ValueError(f"model.kernel_init={name!r}; expected one of {KERNEL_INITS}.")


def _linear_inits(kernel_init, fan_in: int) -> dict:
  """nnx.Linear's initializer arguments for a layer of `fan_in` inputs: a TorchLinearInit
  sets kernel and bias; any other initializer the kernel (flax's zero biases)."""
  if isinstance(kernel_init, TorchLinearInit):
    return kernel_init(fan_in)
  return {"kernel_init": kernel_init or kernel_initializer()}


def _scaled_normal(key, shape, dtype=jnp.float32, *, stddev: float):
  """N(0, stddev^2), as nnx.initializers.normal. The barrier keeps XLA from folding the
  scale into the sampler's own constants under jit, so a jitted init gives the bytes of an
  eager one (runs initialised before init was jitted keep their parameters)."""
  return jax.lax.optimization_barrier(jax.random.normal(key, shape, dtype)) * jnp.asarray(
      stddev, dtype)


# None: each layer computes in its inputs' and parameters' dtype (float32, or float64 under
# jax_enable_x64 in the gradient tests).
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"model.compute_dtype={name!r}; expected one of {sorted(COMPUTE_DTYPES)}.")
  return COMPUTE_DTYPES[name]


# JAX's names for a float32 matmul's precision (jax.default_matmul_precision): the level
# each backend maps to its own arithmetic, e.g. 'tensorfloat32' is TF32 tensor cores on an
# NVIDIA GPU and 'bfloat16' one bfloat16 pass on a TPU; XLA:CPU computes every level in
# float32.
MATMUL_PRECISION_LEVELS = ("float32", "tensorfloat32", "bfloat16")


def matmul_precision(name: str):
  """nnx.Linear's `precision` for model.matmul_precision: None for 'default' (the
  backend's: TF32 on recent NVIDIA GPUs, one bfloat16 pass on TPUs, float32 on CPUs),
  a jax.lax.Precision for a level, or a jax.lax.DotAlgorithmPreset named exactly
  ('F32_F32_F32', 'TF32_TF32_F32', 'BF16_BF16_F32_X3', ...). 'BF16_BF16_F32' on the CPU,
  which XLA:CPU computes in float32, is carried out by bfloat16_matmul (see _linear)."""
  if name == "default":
    return None
  if name in MATMUL_PRECISION_LEVELS:
    return jax.lax.Precision(name)
  if name in jax.lax.DotAlgorithmPreset.__members__ and name != "DEFAULT":
    return jax.lax.DotAlgorithmPreset[name]
  raise ValueError(f"model.matmul_precision={name!r}; expected 'default', one of "
                   f"{MATMUL_PRECISION_LEVELS}, or a jax.lax.DotAlgorithmPreset name such as "
                   "'F32_F32_F32' or 'TF32_TF32_F32'.")


def _linear(din: int, dout: int, *, precision, **kwargs) -> nnx.Linear:
  """nnx.Linear with float32 parameters at matmul_precision `precision`. BF16_BF16_F32 on
  the CPU, which XLA:CPU would compute in float32, takes bfloat16_matmul's dot_general."""
  if (precision == jax.lax.DotAlgorithmPreset[bfloat16_matmul.MATMUL_PRECISION]
      and jax.default_backend() == "cpu"):
    kwargs["dot_general"], precision = bfloat16_matmul.dot_general, None
  return nnx.Linear(din, dout, param_dtype=jnp.float32, precision=precision, **kwargs)


class MLP(nnx.Module):
  """Linear layers with `activation` between them (none after the last).

  Parameters are float32; the layers compute in `dtype` (None: the parameters' own;
  bfloat16: matmuls and activations at half width), their matmuls at `precision`
  (matmul_precision), and the output is at least float32, so the bounds' sums over
  pixels and labels stay in float32 whatever the layers use.
  """

  def __init__(self, din: int, hidden: Sequence[int], dout: int, *, activation: str,
               rngs: nnx.Rngs, kernel_init=None, dtype=None, precision=None):
    sizes = [din, *hidden, dout]
    self.layers = nnx.List([_linear(a, b, **_linear_inits(kernel_init, a), rngs=rngs,
                                    dtype=dtype, precision=precision)
                            for a, b in zip(sizes, sizes[1:])])
    self.activation = activation_fn(activation)

  def __call__(self, h: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      h = self.activation(layer(h))
    out = self.layers[-1](h)
    return out.astype(jnp.promote_types(out.dtype, jnp.float32))


class Classifier(nnx.Module):
  """q(y|x): x [..., D] -> logits [..., K]."""

  def __init__(self, *, num_pixels, num_classes, hidden, activation, rngs, kernel_init=None,
               dtype=None, precision=None):
    self.net = MLP(num_pixels, hidden, num_classes, activation=activation, rngs=rngs,
                   kernel_init=kernel_init, dtype=dtype, precision=precision)

  def __call__(self, x):
    return self.net(x)


class Encoder(nnx.Module):
  """q(z|x,y), diagonal Gaussian: (x [..., D], y [..., K]) -> (mean, log_var) [..., Z].

  The first layer is W_x x + W_y y + b, written as two matmuls so that when the
  unlabeled bound vmaps over the K labels, W_x x (the bulk of the FLOPs) does not
  depend on the vmapped y and is computed once per image, not K times.
  """

  def __init__(self, *, num_pixels, num_classes, latent_dim, hidden, activation, rngs,
               kernel_init=None, dtype=None, precision=None):
    if not hidden:
      raise ValueError("model.hidden=(): the encoder needs at least one hidden layer.")
    # One layer over [x, y] split in two: both halves are initialised at its fan-in.
    inits = _linear_inits(kernel_init, num_pixels + num_classes)
    self.from_x = _linear(num_pixels, hidden[0], **inits, rngs=rngs, dtype=dtype,
                          precision=precision)
    self.from_y = _linear(num_classes, hidden[0], use_bias=False,
                          kernel_init=inits["kernel_init"], rngs=rngs, dtype=dtype,
                          precision=precision)
    self.activation = activation_fn(activation)
    self.net = MLP(hidden[0], hidden[1:], 2 * latent_dim, activation=activation, rngs=rngs,
                   kernel_init=kernel_init, dtype=dtype, precision=precision)

  def __call__(self, x, y):
    h = self.activation(self.from_x(x) + self.from_y(y))
    mean, log_var = jnp.split(self.net(h), 2, axis=-1)
    return mean, log_var


class Decoder(nnx.Module):
  """p(x|y,z), independent Bernoulli pixels: (y [..., K], z [..., Z]) -> logits [..., D]."""

  def __init__(self, *, num_pixels, num_classes, latent_dim, hidden, activation, rngs,
               kernel_init=None, dtype=None, precision=None):
    self.net = MLP(num_classes + latent_dim, hidden, num_pixels, activation=activation,
                   rngs=rngs, kernel_init=kernel_init, dtype=dtype, precision=precision)

  def __call__(self, y, z):
    return self.net(jnp.concatenate([y, z], -1))


class M2(nnx.Module):
  """The three networks and the sizes the bounds need."""

  def __init__(self, *, num_pixels: int = 784, num_classes: int = 10, latent_dim: int = 50,
               hidden: Sequence[int] = (500,), activation: str = "softplus",
               rngs: nnx.Rngs, kernel_init=None, dtype=None, precision=None):
    self.num_pixels, self.num_classes, self.latent_dim = num_pixels, num_classes, latent_dim
    common = dict(num_pixels=num_pixels, num_classes=num_classes, hidden=tuple(hidden),
                  activation=activation, rngs=rngs, kernel_init=kernel_init, dtype=dtype,
                  precision=precision)
    self.classifier = Classifier(**common)
    self.encoder = Encoder(latent_dim=latent_dim, **common)
    self.decoder = Decoder(latent_dim=latent_dim, **common)


def build(model_config: Any, *, seed: int) -> M2:
  """M2 from the `model` ConfigDict, initialised from `seed`."""
  return build_from_key(model_config, rng_lib.key(seed, rng_lib.Stream.INIT))


def build_from_key(model_config: Any, key: jax.Array) -> M2:
  """M2 from the `model` ConfigDict, initialised from the typed key `key` (traceable)."""
  return M2(num_pixels=model_config.num_pixels, num_classes=model_config.num_classes,
            latent_dim=model_config.latent_dim, hidden=tuple(model_config.hidden),
            activation=model_config.activation,
            rngs=nnx.Rngs(key),
            kernel_init=kernel_initializer(model_config.kernel_init, model_config.init_stddev),
            dtype=compute_dtype(model_config.get("compute_dtype", "float32")),
            precision=matmul_precision(model_config.get("matmul_precision", "default")))
