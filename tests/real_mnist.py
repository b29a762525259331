"""Where the tests find real MNIST: the folder named by $UNTAPPED_DATA_DIR (data/mnist.py's
ENV_VAR), read only. Tests that need it are marked `needs_mnist` and skip without it."""

import os

import pytest

from untapped_jax.data import mnist

DATA_DIR = os.environ.get(mnist.ENV_VAR, "")
needs_mnist = pytest.mark.skipif(
    not DATA_DIR, reason=f"set ${mnist.ENV_VAR} to the folder with the four MNIST IDX files")
