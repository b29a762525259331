"""Per-example bounds. Each takes one example and is batched with jax.vmap."""
