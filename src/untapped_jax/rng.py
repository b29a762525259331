"""Every random stream of a run, in one table.

A stream's JAX key is fold_in(key(seed), stream id) and its NumPy generator is seeded
by the entropy (seed, stream id, *position). Both are hashes of the pair, so replica
s's stream A is never replica t's stream B: seeds 0-9 of a population draw
independent noise in every stream, and a paired comparison over seeds shares none
(tests/rng_test.py checks every (seed, stream) pair of a population). The old scheme,
key(seed + c) with small constants, made seed 0's evaluation key seed 2's grid key.

The evaluators (evaluate/evaluator.py) are the one exception, on purpose: they are a
fixed judge shared by every run, trained once from their recipe's own seed.
"""

from __future__ import annotations

import enum

import jax
import numpy as np


class Stream(enum.IntEnum):
  """The random streams of one replica; ids are part of the results, never reuse one."""
  INIT = 1              # parameter initialisation (models.build)
  TRAIN = 2             # per-step noise: binarisation, z draws, Concrete and x samples
  LABEL_ONLY_Z = 3      # objective.label_only_z='fixed': the z drawn once per class
  HELDOUT = 4           # validation and test evaluation: binarisation and z draws
  SUITE = 5             # the post-training evaluation (samples, permutation, log q(y))
  SEMANTIC_PROBE = 6    # eval.semantic_curve's probe at each validation
  SAMPLE_GRID = 7       # TensorBoard's per-dimension sample grid
  SPLITS = 8            # NumPy: validation / labeled / unlabeled / label-only split
  LABELED_ORDER = 9     # NumPy: per-epoch order of the labeled stream
  UNLABELED_ORDER = 10  # NumPy: ... of the unlabeled stream
  LABEL_ONLY_ORDER = 11  # NumPy: ... of the label-only stream
  POSTERIOR_ANALYSIS = 12  # experiments/posterior_accuracy.py: its importance samples of
                           # log p(x, y), apart from the run's own evaluation draws


JAX_STREAMS = (Stream.INIT, Stream.TRAIN, Stream.LABEL_ONLY_Z, Stream.HELDOUT, Stream.SUITE,
               Stream.SEMANTIC_PROBE, Stream.SAMPLE_GRID, Stream.POSTERIOR_ANALYSIS)
NUMPY_STREAMS = (Stream.SPLITS, Stream.LABELED_ORDER, Stream.UNLABELED_ORDER,
                 Stream.LABEL_ONLY_ORDER)
# data/streams.py's stream_id (0, 1, 2) -> its order stream.
ORDER_STREAMS = (Stream.LABELED_ORDER, Stream.UNLABELED_ORDER, Stream.LABEL_ONLY_ORDER)


def _check_seed(seed: int) -> int:
  seed = int(seed)
  if not 0 <= seed < 2**31:
    raise ValueError(f"seed={seed}; expected an integer in [0, 2**31).")
  return seed


def key(seed: int, stream: Stream) -> jax.Array:
  """The typed JAX key of `stream` for replica `seed`."""
  if stream not in JAX_STREAMS:
    raise ValueError(f"stream {stream!r} is a NumPy stream; JAX streams: {JAX_STREAMS}.")
  return jax.random.fold_in(jax.random.key(_check_seed(seed)), int(stream))


def numpy_rng(seed: int, stream: Stream, position: int = 0) -> np.random.Generator:
  """The NumPy generator of `stream` for replica `seed` at `position` (e.g. an epoch).

  The entropy always has three words, so no two (seed, stream, position) share it.
  """
  if stream not in NUMPY_STREAMS:
    raise ValueError(f"stream {stream!r} is a JAX stream; NumPy streams: {NUMPY_STREAMS}.")
  return np.random.default_rng((_check_seed(seed), int(stream), int(position)))
