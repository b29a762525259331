"""The authors' semantic protocol (imgemp/untapped, examples/DEMO_mnist4.py): one image
per y dimension from the mean z of the labeled data, read by an evaluator, the unseen
dimensions matched greedily to the unseen digits (docs/authors_recipe.md)."""

from __future__ import annotations

import collections
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from untapped_jax.evaluate.evaluator import evaluator_logits


def greedy_assignment(p: np.ndarray) -> np.ndarray:
  """The authors' assign_permutation (examples/DEMO_mnist4.py): rows -> columns of p [n, n].

  Each row requests its argmax column; a column requested by one row goes to it; for
  columns requested by several rows, the clashing rows are matched recursively to the
  columns nobody holds, and when every row clashes the best-scoring row of the first
  clashing column keeps it. As in the authors' code, that row may have asked for
  another column, and the result is then not a permutation (tests/protocols_test.py).
  """
  p = np.asarray(p)
  if p.ndim != 2 or p.shape[0] != p.shape[1]:
    raise ValueError(f"p of shape {p.shape}; expected a square matrix.")
  if p.shape[0] == 1:
    return np.array([0])
  labels = np.argmax(p, axis=1)
  # Columns in order of first request, as the authors' collections.Counter.
  counts = collections.Counter(labels.tolist())
  single = [c for c, n in counts.items() if n == 1]
  dups = [c for c, n in counts.items() if n > 1]
  if not dups:
    return labels
  rows = [i for i in range(p.shape[0]) if labels[i] in dups]
  cols = [j for j in range(p.shape[1]) if j not in single]
  if len(rows) == p.shape[0]:
    winner = int(np.argmax(p[:, dups[0]]))
    rows = [i for i in rows if i != winner]
    cols = [j for j in cols if j != dups[0]]
  sub = greedy_assignment(p[np.ix_(rows, cols)])
  labels[rows] = np.asarray(cols)[sub]
  return labels


def authors_images(graphdef: nnx.GraphDef, params, labeled_x: np.ndarray,
                   labeled_y: np.ndarray) -> np.ndarray:
  """One image per y dimension, as the authors' make_plots: [K, D] in {0, 1}.

  z = the mean over the labeled data of q(z|x,y)'s mean; image k is the decoder's
  mean for (e_k, z) thresholded at 0.5. labeled_x [N, D] floats, labeled_y [N, K].
  """
  model = nnx.merge(graphdef, params)
  z_bar = jnp.mean(model.encoder(jnp.asarray(labeled_x), jnp.asarray(labeled_y))[0], 0)
  k = model.num_classes
  probs = jax.nn.sigmoid(model.decoder(jnp.eye(k), jnp.broadcast_to(z_bar, (k, len(z_bar)))))
  return np.asarray(probs > 0.5, np.float32)


def authors_protocol(images: np.ndarray, evaluator_params, *, seen_digits
                     ) -> dict[str, Any]:
  """The authors' reading of one image per dimension: images [K, D] -> results.

  Dimensions of the seen digits keep their digit; the others are matched greedily
  (greedy_assignment) to the unseen digits by the evaluator's probabilities.
  authors_distinct_digits counts the distinct evaluator argmax digits of the images.
  """
  probs = np.asarray(jax.nn.softmax(evaluator_logits(evaluator_params, jnp.asarray(images))))
  k = probs.shape[0]
  seen = sorted(d for d in seen_digits if d < k)
  unseen = [d for d in range(k) if d not in seen]
  perm = np.arange(k)
  if unseen:
    perm[unseen] = np.asarray(unseen)[greedy_assignment(probs[np.ix_(unseen, unseen)])]
  predicted = np.argmax(probs, 1)
  return {"authors_permutation": perm.tolist(),
          "authors_evaluator_digits": predicted.tolist(),
          "authors_distinct_digits": int(len(np.unique(predicted)))}
