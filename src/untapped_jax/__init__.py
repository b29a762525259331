"""untapped_jax: semi-supervised VAEs (M2) and Untapped in JAX/Flax NNX."""

import time

__version__ = "0.1.0"

# The start-up figures of timing.json count from the first import of the package, which
# the command-line tools do before JAX is imported.
IMPORTED_AT = time.time()
