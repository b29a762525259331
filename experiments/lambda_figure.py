r"""Distinct digits, gate agreement and held-out accuracy against lambda, one line per objective.

  python experiments/lambda_figure.py --out docs/figures/lambda_sweep.png \
      --table docs/results/lambda_sweep/table.md SWEEP_DIR [SWEEP_DIR ...]

Reads every finished run under the sweep folders (WORKDIR/<variant>/seed_<s>/results.json
beside its config.json), groups them by (label-only objective, lambda) and draws the
mean over seeds with its 95% t-interval; M2 runs (model_name=m2) become a horizontal band.
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from untapped_jax import files  # pylint: disable=g-import-not-at-top,wrong-import-position
from untapped_jax import stats  # pylint: disable=g-import-not-at-top,wrong-import-position

PANELS = (("mlp_distinct_digits", "distinct digits (MLP evaluator)"),
          ("mlp_authors_distinct_digits", "distinct digits (authors' protocol, MLP)"),
          ("gate_seen_agreement", "gate: dims 0-4 agreement"),
          ("mlp_heldout_accuracy", "held-out 5-9 accuracy (MLP permutation)"))
TABLE_METRICS = ("mlp_distinct_digits", "mlp_authors_distinct_digits", "gate_passed",
                 "gate_seen_agreement", "mlp_heldout_accuracy", "test_log_q_y_direct",
                 "test_unlabeled_bound")


def find_runs(roots):
  """(objective, lambda, image_prior, steps) -> {seed: results} over the sweep folders."""
  runs = collections.defaultdict(dict)
  for root in roots:
    for folder, _, names in os.walk(root):
      if "results.json" not in names or "config.json" not in names:
        continue
      with open(os.path.join(folder, "config.json")) as f:
        c = json.load(f)
      with open(os.path.join(folder, "results.json")) as f:
        r = json.load(f)
      o = c["objective"]
      m2 = c["model_name"] == "m2"
      key = ("M2" if m2 else o["label_only"], 0.0 if m2 else o["label_only_weight"],
             o["image_prior"], c["train"]["num_steps"])
      runs[key][c["seed"]] = r
  return runs


def table(runs) -> str:
  lines = ["| objective | lambda | q(x) | steps | seeds | " + " | ".join(TABLE_METRICS) + " |",
           "|---" * (len(TABLE_METRICS) + 5) + "|"]
  for (name, lam, prior, steps), by_seed in sorted(runs.items()):
    cells = []
    for m in TABLE_METRICS:
      values = [float(r[m]) for r in by_seed.values() if m in r]
      mean, half = stats.mean_and_interval(values) if values else (float("nan"),) * 2
      cells.append(f"{mean:.3f} ± {half:.3f}" if np.isfinite(half) else f"{mean:.3f}")
    lines.append(f"| {name} | {lam:g} | {prior} | {steps} | {sorted(by_seed)} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def figure(runs, out: str, *, steps: int | None, title: str = "") -> None:
  fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
  lines = collections.defaultdict(list)
  for (name, lam, prior, n), by_seed in runs.items():
    if steps is not None and n != steps:
      continue
    lines[(name, prior)].append((lam, by_seed))
  for ax, (metric, label) in zip(axes, PANELS):
    for (name, prior), points in sorted(lines.items()):
      points.sort(key=lambda p: p[0])
      stats_ = [stats.mean_and_interval([float(r[metric]) for r in s.values() if metric in r])
                for _, s in points]
      mean = np.array([m for m, _ in stats_])
      half = np.nan_to_num(np.array([h for _, h in stats_]))
      tag = f"{name} (q(x) {prior})" if name == "bound" else name
      if name == "M2":
        ax.axhspan(mean[0] - half[0], mean[0] + half[0], color="0.85")
        ax.axhline(mean[0], color="0.4", ls="--", label="M2")
        continue
      lams = np.array([p[0] for p in points])
      ax.errorbar(lams, mean, yerr=half, marker="o", capsize=3, label=tag)
    ax.set_ylim((0, 10.5) if "digits" in metric else (0, 1.02))
    ax.set_xscale("log")
    ax.set_xlabel("lambda (label-only weight)")
    ax.set_title(label, fontsize=9)
  axes[0].legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with files.atomic_path(out) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("roots", nargs="+")
  parser.add_argument("--out", required=True)
  parser.add_argument("--table", default="")
  parser.add_argument("--steps", type=int, default=None, help="only runs of this length")
  parser.add_argument("--title", default="")
  args = parser.parse_args()
  runs = find_runs(args.roots)
  if not runs:
    parser.error(f"no finished runs under {args.roots}")
  figure(runs, args.out, steps=args.steps, title=args.title)
  text = table(runs)
  if args.table:
    files.write_text(args.table, text)
  print(text)


if __name__ == "__main__":
  main()
