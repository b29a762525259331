"""The three cycling training streams and image binarisation.

A stream's batch at step t is a pure function of (data, seed, t): example i of
the stream's infinite sequence is permutation_e[i mod N] with e = i // N and
permutation_e drawn from (seed, stream id, e). So the stream position *is* the
train step, and a restored state resumes exactly, with no iterator to save.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from untapped_jax import rng as rng_lib

STREAMS = ("labeled", "unlabeled", "label_only")
BINARIZATIONS = ("dynamic", "static", "none", "none_256")


class CyclingStream:
  """Batches of `arrays` (dict of [N, ...] NumPy arrays), reshuffled every epoch."""

  def __init__(self, arrays: dict[str, np.ndarray], *, batch_size: int, seed: int,
               stream_id: int):
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1 or 0 in sizes:
      raise ValueError(f"stream {stream_id}: arrays must share one non-zero length, got "
                       f"{ {k: len(a) for k, a in arrays.items()} }.")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}: expected a positive integer.")
    self.arrays, self.batch_size = arrays, batch_size
    self.size = sizes.pop()
    self._seed, self._stream_id = seed, stream_id
    self._permutations: dict[int, np.ndarray] = {}  # the current epoch's and the next's

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      if len(self._permutations) >= 2:
        self._permutations.pop(min(self._permutations))
      self._permutations[epoch] = rng_lib.numpy_rng(
          self._seed, rng_lib.ORDER_STREAMS[self._stream_id], epoch).permutation(self.size)
    return self._permutations[epoch]

  def indices_at(self, step: int) -> np.ndarray:
    """Dataset indices of the batch at `step`, int64 [batch_size]."""
    flat = step * self.batch_size + np.arange(self.batch_size)
    epochs, offsets = np.divmod(flat, self.size)
    out = np.empty(self.batch_size, np.int64)
    for e in np.unique(epochs):
      mask = epochs == e
      out[mask] = self._permutation(int(e))[offsets[mask]]
    return out

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    idx = self.indices_at(step)
    return {k: a[idx] for k, a in self.arrays.items()}

  def epochs_at(self, step: int) -> float:
    return step * self.batch_size / self.size


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  return np.eye(num_classes, dtype=np.float32)[labels]


def make_streams(splits, config, *, seed: int) -> dict[str, CyclingStream]:
  """One stream per training set.

  The image streams yield 'index' (int32 rows of MNIST's training images), not
  images: the images live on the device and the train step gathers them
  (gather_images), so a step moves a few hundred integers, not megabytes.
  """
  data = config.data
  k = config.model.num_classes
  rows = lambda split: split.indices.astype(np.int32)
  return {
      "labeled": CyclingStream(
          {"index": rows(splits.labeled), "y": one_hot(splits.labeled.labels, k)},
          batch_size=data.labeled_batch_size, seed=seed, stream_id=0),
      "unlabeled": CyclingStream(
          {"index": rows(splits.unlabeled)}, batch_size=data.unlabeled_batch_size,
          seed=seed, stream_id=1),
      "label_only": CyclingStream(
          {"y": one_hot(splits.label_only.labels, k)},
          batch_size=data.label_only_batch_size, seed=seed, stream_id=2),
  }


def batch_at(streams: dict[str, CyclingStream], step: int) -> dict[str, dict[str, np.ndarray]]:
  return {name: stream.batch_at(step) for name, stream in streams.items()}


def gather_images(batch, images: jax.Array):
  """Replaces each stream's 'index' [..., B] by 'x' = images[index] [..., B, D] (uint8)."""
  return {name: {("x" if k == "index" else k): (images[v] if k == "index" else v)
                 for k, v in arrays.items()} for name, arrays in batch.items()}


def binarize(images: jax.Array, rng: jax.Array, *, mode: str) -> jax.Array:
  """uint8 [..., 784] -> float32 in {0,1} ('dynamic', 'static') or [0,1] ('none', 'none_256').

  'dynamic' draws each pixel ~ Bernoulli(intensity) afresh from `rng`;
  'static' thresholds at 0.5; 'none' gives the grey levels k/255; 'none_256' the grey
  levels k/256 of deeplearning.net's mnist.pkl.gz, which Kingma et al.'s and jonemeth's
  M2 code train on (its brightest pixel 0.996, so every target keeps some entropy).
  """
  if mode == "none_256":
    return images.astype(jnp.float32) / 256.0
  x = images.astype(jnp.float32) / 255.0
  if mode == "dynamic":
    return jax.random.bernoulli(rng, x).astype(jnp.float32)
  if mode == "static":
    return (x > 0.5).astype(jnp.float32)
  if mode == "none":
    return x
  raise ValueError(f"data.binarization={mode!r}; expected one of {BINARIZATIONS}.")
