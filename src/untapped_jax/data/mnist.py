"""MNIST readers: a local folder of IDX files (gzip or raw) or tensorflow-datasets.

Every reader returns a dict of NumPy arrays:
  train_images uint8 [60000, 784], train_labels uint8 [60000],
  test_images uint8 [10000, 784], test_labels uint8 [10000].
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Any

import numpy as np

ENV_VAR = "UNTAPPED_DATA_DIR"
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
NUM_PIXELS = 28 * 28

# (array name, IDX base name, magic, expected count)
FILES = (
    ("train_images", "train-images-idx3-ubyte", IMAGE_MAGIC, 60000),
    ("train_labels", "train-labels-idx1-ubyte", LABEL_MAGIC, 60000),
    ("test_images", "t10k-images-idx3-ubyte", IMAGE_MAGIC, 10000),
    ("test_labels", "t10k-labels-idx1-ubyte", LABEL_MAGIC, 10000),
)


class MnistError(ValueError):
  """A missing, truncated or corrupt MNIST file, or no way to load MNIST."""


def _find_file(directory: str, base: str) -> str:
  for name in (base + ".gz", base):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  raise MnistError(
      f"MNIST file {base}.gz (or uncompressed {base}) not found in {directory!r}; "
      "expected the four standard IDX files there.")


def read_idx(path: str, *, magic: int, count: int) -> np.ndarray:
  """Reads one IDX file; images come back as [count, 784], labels as [count]."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip's errors on corrupt or cut streams
    raise MnistError(f"{path}: cannot read ({e}); expected an IDX file"
                     f"{' compressed with gzip' if path.endswith('.gz') else ''}.") from e
  header_len = 16 if magic == IMAGE_MAGIC else 8
  if len(raw) < header_len:
    raise MnistError(f"{path}: {len(raw)} bytes, shorter than the {header_len}-byte IDX header.")
  found_magic = int.from_bytes(raw[0:4], "big")
  if found_magic != magic:
    raise MnistError(f"{path}: magic number {found_magic:#010x}, expected {magic:#010x}.")
  found_count = int.from_bytes(raw[4:8], "big")
  if found_count != count:
    raise MnistError(f"{path}: header says {found_count} items, expected {count}.")
  if magic == IMAGE_MAGIC:
    rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
    if (rows, cols) != (28, 28):
      raise MnistError(f"{path}: images of {rows}x{cols}, expected 28x28.")
  expected = header_len + count * (NUM_PIXELS if magic == IMAGE_MAGIC else 1)
  if len(raw) != expected:
    raise MnistError(f"{path}: {len(raw)} bytes, expected {expected} "
                     f"({'truncated' if len(raw) < expected else 'trailing data'}).")
  data = np.frombuffer(raw, dtype=np.uint8, offset=header_len)
  if magic == IMAGE_MAGIC:
    return data.reshape(count, NUM_PIXELS)
  if data.max() > 9:
    raise MnistError(f"{path}: label {int(data.max())} found, expected labels 0-9.")
  return data


def load_folder(directory: str) -> dict[str, np.ndarray]:
  """Reads the four standard IDX files (gzip or raw) from `directory`."""
  if not os.path.isdir(directory):
    raise MnistError(f"MNIST folder {directory!r} does not exist or is not a folder.")
  return {name: read_idx(_find_file(directory, base), magic=magic, count=count)
          for name, base, magic, count in FILES}


def load_tfds(data_dir: str | None = None) -> dict[str, np.ndarray]:
  """Reads MNIST with tfds.data_source (NumPy records, no TensorFlow needed)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  out = {}
  for split in ("train", "test"):
    source = tfds.data_source("mnist", split=split, data_dir=data_dir or None)
    records = [source[i] for i in range(len(source))]
    out[f"{split}_images"] = np.stack(
        [np.asarray(r["image"], np.uint8).reshape(NUM_PIXELS) for r in records])
    out[f"{split}_labels"] = np.asarray([r["label"] for r in records], np.uint8)
  return out


def check_source(data_config: Any) -> None:
  """load()'s folder errors without reading the files: a launch checks them before it
  creates its workdir. (tfds is only known to work by loading.)"""
  directory = data_config.dir or os.environ.get(ENV_VAR, "")
  if data_config.source == "folder" and not directory:
    raise MnistError(f"data.source='folder' needs data.dir or ${ENV_VAR} to name a folder.")
  if data_config.source in ("folder", "auto") and directory:
    if not os.path.isdir(directory):
      raise MnistError(f"MNIST folder {directory!r} does not exist or is not a folder.")
    for _, base, _, _ in FILES:
      _find_file(directory, base)


def load(data_config: Any) -> dict[str, np.ndarray]:
  """Loads MNIST as `data_config.source` says: 'folder', 'tfds' or 'auto'.

  'auto' reads `data_config.dir` (default: $UNTAPPED_DATA_DIR) when set, else tfds.
  """
  source = data_config.source
  directory = data_config.dir or os.environ.get(ENV_VAR, "")
  if source == "folder":
    if not directory:
      raise MnistError(f"data.source='folder' needs data.dir or ${ENV_VAR} to name a folder.")
    return load_folder(directory)
  if source == "tfds":
    return load_tfds(data_config.tfds_data_dir)
  if source != "auto":
    raise MnistError(f"data.source={source!r}; expected 'auto', 'folder' or 'tfds'.")
  if directory:
    return load_folder(directory)
  try:
    return load_tfds(data_config.tfds_data_dir)
  except Exception as e:  # tfds raises many types when offline or unprepared
    raise MnistError(
        "Cannot load MNIST: no local folder is set and tensorflow-datasets failed "
        f"({type(e).__name__}: {e}). Either point --config.data.dir (or ${ENV_VAR}) at a "
        "folder with the four IDX files, or go online so tfds can download MNIST.") from e
