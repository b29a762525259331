"""untapped_jax: semi-supervised VAEs (M2) and Untapped in JAX/Flax NNX."""

__version__ = "0.1.0"
