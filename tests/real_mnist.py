"""Where the tests find MNIST.

REAL_DATA_DIR is the folder named by $UNTAPPED_DATA_DIR (data/mnist.py's ENV_VAR), read
only; tests of what real digits do (accuracies, class counts, the evaluators) are marked
`needs_mnist` and skip without it. DATA_DIR is that folder when set, else a synthetic MNIST:
the four IDX files with MNIST's shapes and counts, each image a noisy copy of its class's
fixed random template, written once per machine under the temp folder. The end-to-end paths
(launches, kills, locks, resumes, several processes and devices) need files in MNIST's
format, not real digits, so they run anywhere.
"""

import os
import shutil
import tempfile

import numpy as np
import pytest

from untapped_jax.data import mnist

REAL_DATA_DIR = os.environ.get(mnist.ENV_VAR, "")
needs_mnist = pytest.mark.skipif(
    not REAL_DATA_DIR,
    reason=f"set ${mnist.ENV_VAR} to the folder with the four MNIST IDX files")

SYNTHETIC_VERSION = 1


def _write_idx(path: str, array: np.ndarray, magic: int) -> None:
  header = magic.to_bytes(4, "big") + len(array).to_bytes(4, "big")
  if array.ndim == 2:  # images: rows and columns after the count
    header += (28).to_bytes(4, "big") * 2
  with open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def synthetic_mnist_dir() -> str:
  """The synthetic folder (see the module doc), written on first use."""
  folder = os.path.join(tempfile.gettempdir(), f"untapped_synthetic_mnist_v{SYNTHETIC_VERSION}")
  if os.path.isdir(folder):
    return folder
  rng = np.random.default_rng(0)
  templates = rng.random((10, mnist.NUM_PIXELS)) < 0.25  # [10, 784] stroke masks
  staging = tempfile.mkdtemp(dir=tempfile.gettempdir(), prefix=".synthetic_mnist")
  for (name, base, magic, count) in mnist.FILES:
    if name.endswith("labels"):
      labels = rng.integers(0, 10, count).astype(np.uint8)
      _write_idx(os.path.join(staging, base), labels, magic)
      # The images of this split follow: same labels.
      flip = rng.random((count, mnist.NUM_PIXELS)) < 0.1
      ink = rng.integers(128, 256, (count, mnist.NUM_PIXELS))
      images = np.where(templates[labels] ^ flip, ink, 0)
      image_base = base.replace("labels-idx1", "images-idx3")
      _write_idx(os.path.join(staging, image_base), images, mnist.IMAGE_MAGIC)
  try:
    os.rename(staging, folder)  # atomic: parallel workers keep whichever came first
  except OSError:  # another process wrote it first
    shutil.rmtree(staging, ignore_errors=True)
  return folder


DATA_DIR = REAL_DATA_DIR or synthetic_mnist_dir()
