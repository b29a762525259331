"""The small M2s of the numerical tests: flax's initialisation with random non-zero biases.

The default initialisation's biases are zero, which would hide a missing or doubled bias
in a bound; each test file draws its own biases (its own `bias_seed`) and adjusts what
its checks need (see scale_z_rows).
"""

from flax import nnx
import jax.numpy as jnp
import numpy as np

from untapped_jax.models import M2


def tiny_m2(seed: int, *, num_pixels: int, num_classes: int, latent_dim: int, hidden,
            activation: str, bias_seed: int, bias_scale: float = 0.5,
            kernel_scale: float = 1.0, dtype=None) -> M2:
  """M2 initialised from `seed`, every bias bias_scale * N(0, 1) from
  RandomState(bias_seed), every kernel times kernel_scale."""
  model = M2(num_pixels=num_pixels, num_classes=num_classes, latent_dim=latent_dim,
             hidden=hidden, activation=activation, rngs=nnx.Rngs(seed), dtype=dtype)
  rs = np.random.RandomState(bias_seed)
  for _, layer in nnx.iter_graph(model):
    if isinstance(layer, nnx.Linear):
      if kernel_scale != 1.0:
        layer.kernel[...] = layer.kernel[...] * kernel_scale
      if layer.bias is not None:
        layer.bias[...] = jnp.asarray(bias_scale * rs.randn(*layer.bias[...].shape),
                                      jnp.float32)
  return model


def scale_z_rows(model: M2, factor: float) -> M2:
  """The decoder's first-layer rows fed by z, times `factor`: > 1 makes p(x|y,z) depend
  clearly on z; 0 makes p(x|y,z) = p(x|y), so every ELBO is free of noise."""
  first = model.decoder.net.layers[0]
  first.kernel[...] = first.kernel[...].at[model.num_classes:].multiply(factor)
  return model
