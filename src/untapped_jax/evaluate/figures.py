"""Figures of a run, written atomically as PNG: the sample grid per y dimension, the
inconsistency figure (y -> x -> argmax q(y|x)) and learning curves from metrics.jsonl."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from untapped_jax import files
from untapped_jax import metric_writer


def _save(fig, path: str) -> None:
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
  plt.close(fig)


def _image_axes(x: np.ndarray, columns: int, *, cell_inches: float, left_inches: float,
                gap: int = 2, top_inches: float = 0.6):
  """A figure holding one axes with the tiled samples (one imshow: a grid of K x M
  axes costs matplotlib about a second per figure); returns (fig, ax, pixels per cell)."""
  k = x.shape[0]
  step = 28 + gap
  fig = plt.figure(figsize=(columns * cell_inches + left_inches, k * cell_inches + top_inches))
  ax = fig.add_axes((left_inches / fig.get_figwidth(), 0.02,
                     1 - left_inches / fig.get_figwidth() - 0.01,
                     1 - top_inches / fig.get_figheight() - 0.02))
  cmap = plt.get_cmap("gray_r").with_extremes(bad="white")
  ax.imshow(metric_writer.tile_samples(x[:, :columns], gap=gap), cmap=cmap, vmin=0, vmax=1,
            interpolation="nearest")
  ax.set_axis_off()
  return fig, ax, step


def sample_grid(x: np.ndarray, majority_digits, duplicated_digits, path: str, *,
                title: str = "", columns: int = 10) -> None:
  """One row per y dimension: `columns` samples, labelled with the evaluator's digit.

  x [K, M, 784]; rows whose digit another row also generates are marked in red.
  """
  columns = min(columns, x.shape[1])
  fig, ax, step = _image_axes(x, columns, cell_inches=0.8, left_inches=1.6)
  duplicated = set(int(d) for d in duplicated_digits)
  for row in range(x.shape[0]):
    digit = int(majority_digits[row])
    dup = digit in duplicated
    ax.text(-4, row * step + 14, f"y={row} → {digit}" + (" dup" if dup else ""),
            ha="right", va="center", fontsize=9, color="red" if dup else "black")
  fig.suptitle(title, fontsize=10)
  _save(fig, path)


def inconsistency_figure(x: np.ndarray, model_digits: np.ndarray, path: str, *,
                         title: str = "", columns: int = 8) -> None:
  """y -> generated x -> argmax q(y|x), per dimension: green if it returns y, red if not.

  x [K, M, 784], model_digits int [K, M] (the model's own classification of x).
  """
  columns = min(columns, x.shape[1])
  fig, ax, step = _image_axes(x, columns, cell_inches=0.9, left_inches=2.2, gap=10,
                                top_inches=0.9)
  for row in range(x.shape[0]):
    for col in range(columns):
      pred = int(model_digits[row, col])
      ax.text(col * step + 14, row * step + 28.5, f"q→{pred}", ha="center", va="top",
              fontsize=7, color="green" if pred == row else "red")
    consistent = float(np.mean(model_digits[row] == row))
    ax.text(-4, row * step + 14, f"y={row}\n{consistent:.0%} back", ha="right",
            va="center", fontsize=8)
  fig.suptitle(title + "\n(y → x ~ p(x|y,z) → argmax q(y|x))", fontsize=10)
  _save(fig, path)


CURVE_METRICS = (("validation/semantic_mlp_distinct_digits", "distinct digits (MLP evaluator)"),
                 ("validation/semantic_mlp_heldout_accuracy", "held-out 5-9 accuracy"),
                 ("validation/semantic_mlp_seen_agreement", "gate: dims 0-4 agreement"))


CURVES = (("train/unlabeled_bound", "train: unlabeled bound U(x)"),
          ("train/labeled_elbo", "train: labeled ELBO"),
          ("validation/accuracy", "validation accuracy of q(y|x)"),
          ("train/label_only_estimate", "train: label-only term"),
          *CURVE_METRICS)


def metric_curves(runs: dict[str, list[dict]], path: str, *, keys=CURVES, title: str = ""
                  ) -> list[str]:
  """One panel per metric of `keys` that some run logged, one line per run; returns
  the metrics drawn."""
  present = [(k, n) for k, n in keys if any(k in r for recs in runs.values() for r in recs)]
  if not present:
    return []
  fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.2), squeeze=False)
  for ax, (key, name) in zip(axes[0], present):
    for label, records in runs.items():
      points = [(r["step"], r[key]) for r in records if key in r]
      if points:
        ax.plot(*zip(*points), marker="o", markersize=2, linewidth=1, label=label)
    ax.set_xlabel("step")
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3)
  if len(runs) <= 12:
    axes[0][0].legend(fontsize=7)
  if title:
    fig.suptitle(title)
  _save(fig, path)
  return [k for k, _ in present]
