r"""Figures (PNG, written atomically) and `untapped-report`, a Markdown report of runs.

  untapped-report runs/m2_100x5 runs/screen [--out runs/report] [--metrics a,b] \
      [--reference model_name=m2]

Each DIR is a run folder (it holds results.json), or a folder of them: a
num_seeds run (DIR/seed_<s>/) or a sweep (DIR/<variant>/seed_<s>/). Runs whose
folders are named seed_<s> group by their parent into one variant, tabulated with
the mean and 95% interval over seeds (sweep.sweep_tables). The report
(OUT/report.md) holds that table, learning curves of the bounds and accuracies
from metrics.jsonl, and links to each run's sample grid; it reads without
TensorBoard.
"""

from __future__ import annotations

import json
import os
import re
import shutil

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


def sample_grid(x: np.ndarray, majority_digits, duplicated_digits, path: str, *,
                title: str = "", columns: int = 10) -> None:
  """One row per y dimension: `columns` samples, labelled with the evaluator's digit.

  x [K, M, 784]; rows whose digit another row also generates are marked in red.
  """
  k, columns = x.shape[0], min(columns, x.shape[1])
  fig, axes = plt.subplots(k, columns, figsize=(columns * 0.8 + 1.6, k * 0.8 + 0.6),
                           squeeze=False)
  for row in range(k):
    digit = int(majority_digits[row])
    dup = digit in set(duplicated_digits)
    for col in range(columns):
      ax = axes[row, col]
      ax.imshow(x[row, col].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[row, 0].set_ylabel(f"y={row} → {digit}" + (" dup" if dup else ""), rotation=0,
                            ha="right", va="center", fontsize=9,
                            color="red" if dup else "black")
  fig.suptitle(title, fontsize=10)
  _save(fig, path)


def inconsistency_figure(x: np.ndarray, model_digits: np.ndarray, path: str, *,
                         title: str = "", columns: int = 8) -> None:
  """y -> generated x -> argmax q(y|x), per dimension: green if it returns y, red if not.

  x [K, M, 784], model_digits int [K, M] (the model's own classification of x).
  """
  k, columns = x.shape[0], min(columns, x.shape[1])
  fig, axes = plt.subplots(k, columns, figsize=(columns * 0.9 + 2.2, k * 0.95 + 0.6),
                           squeeze=False)
  for row in range(k):
    for col in range(columns):
      ax = axes[row, col]
      pred = int(model_digits[row, col])
      ax.imshow(x[row, col].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"q→{pred}", fontsize=7, pad=1,
                   color="green" if pred == row else "red")
    consistent = float(np.mean(model_digits[row] == row))
    axes[row, 0].set_ylabel(f"y={row}\n{consistent:.0%} back", rotation=0, ha="right",
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


SEED_DIR = re.compile(r"^seed_(-?\d+)$")
REPORT_METRICS = ("test_accuracy", "best_validation_accuracy", "test_unlabeled_bound",
                  "test_labeled_elbo", "unlabeled_epochs", "train_wall_s")


def find_runs(roots) -> dict[str, dict[int, str]]:
  """variant -> seed -> run folder, for every results.json under the roots."""
  found: dict[str, dict[int, str]] = {}
  for root in roots:
    if not os.path.isdir(root):
      raise FileNotFoundError(f"{root!r}: not a folder; expected run or sweep folders.")
    for folder, dirs, names in sorted(os.walk(root)):
      dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "populations", "tensorboard"))
      if "results.json" not in names:
        continue
      with open(os.path.join(folder, "results.json")) as f:
        seed = int(json.load(f).get("seed", 0))
      name = os.path.basename(os.path.normpath(folder))
      variant_dir = os.path.dirname(os.path.normpath(folder)) if SEED_DIR.match(name) else folder
      variant = os.path.relpath(variant_dir, root)
      if variant == ".":
        variant = os.path.basename(os.path.normpath(root))
      elif len(roots) > 1:
        variant = os.path.join(os.path.basename(os.path.normpath(root)), variant)
      found.setdefault(variant, {})[seed] = folder
  if not found:
    raise FileNotFoundError(f"no results.json under {list(roots)}.")
  return found


def write_report(roots, out: str, *, metrics=(), reference: str = "") -> str:
  """Writes OUT/report.md (and its figures); returns the Markdown."""
  from untapped_jax import sweep  # pylint: disable=g-import-not-at-top
  runs = find_runs(roots)
  os.makedirs(out, exist_ok=True)
  results = {v: {s: metric_writer.read_results(d) for s, d in seeds.items()}
             for v, seeds in runs.items()}
  md_table, csv_table = sweep.sweep_tables(results, reference=reference,
                                           metrics=tuple(metrics) or REPORT_METRICS + sweep.METRICS)
  files.write_text(os.path.join(out, "report.csv"), csv_table)
  lines = [f"# Report: {', '.join(roots)}", "", f"{sum(map(len, runs.values()))} runs in "
           f"{len(runs)} variants. Final metrics:", "", md_table, "## Learning curves", ""]
  for i, (variant, seeds) in enumerate(runs.items()):
    records = {}
    for seed, folder in sorted(seeds.items()):
      path = os.path.join(folder, "metrics.jsonl")
      if os.path.exists(path):
        records[f"seed {seed}"] = [json.loads(l) for l in open(path) if l.strip()]
    figure = f"curves_{i}.png"
    if records and metric_curves(records, os.path.join(out, figure), title=variant):
      lines += [f"### {variant}", "", f"![{variant}]({figure})", ""]
    grids = [(seed, os.path.join(folder, "samples_grid.png")) for seed, folder in sorted(seeds.items())
             if os.path.exists(os.path.join(folder, "samples_grid.png"))]
    for seed, grid in grids:
      name = f"samples_{i}_seed{seed}.png"
      shutil.copyfile(grid, os.path.join(out, name))
      lines += [f"Samples per y dimension, {variant} seed {seed}:", "", f"![]({name})", ""]
  md = "\n".join(lines) + "\n"
  files.write_text(os.path.join(out, "report.md"), md)
  return md


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  roots = argv[1:]
  if not roots:
    raise SystemExit("untapped-report DIR [DIR ...]: name at least one run or sweep folder.")
  out = f.out or os.path.join(roots[0], "report")
  print(write_report(roots, out, metrics=f.metrics or (), reference=f.reference))
  print(f"written to {out}/report.md")


def run():
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("out", "", "Folder of the report (default: FIRST_DIR/report).")
  flags.DEFINE_list("metrics", None, "Final metrics to tabulate (default: every known one).")
  flags.DEFINE_string("reference", "", "Variant for paired differences, e.g. model_name=m2.")
  app.run(main)


if __name__ == "__main__":
  run()
