from untapped_jax.main import run

run()
