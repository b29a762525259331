r"""Where the held-out digits' test errors go: to a labeled digit's dimension or another free one.

  python experiments/heldout_errors.py [--out docs/results/length/heldout_errors.md] RUN_DIR ...

For every results file under the folders with `test_digit_assignment` ([digit,
dimension] counts of the classifier's choice on the real test images) and the MLP
evaluator's closest permutation (dimension -> digit): per held-out digit, the share of its
test images the classifier gives to the dimension matched to it (its recall, whose
image-weighted mean is `mlp_heldout_accuracy`), to the dimension of a labeled digit, or to
another free dimension; and the largest single confusions. A summary row per variant (the
path with its seed number taken out) gives means with 95% intervals over its seeds. The split says which change could help: errors into labeled
dimensions come from the classifier's supervised term claiming look-alikes (a 5 read as
the labeled 3), errors among the free dimensions from how well the model clusters the
unlabeled digits.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re

import numpy as np

from untapped_jax import files
from untapped_jax import report
from untapped_jax import stats


@dataclasses.dataclass(frozen=True)
class HeldoutErrors:
  """One run's held-out test images by where the classifier puts them (shares of all of them)."""
  recall: dict[int, float]  # held-out digit -> share of its images in its matched dimension
  to_matched: float  # = mlp_heldout_accuracy
  to_labeled_dims: float  # into the dimension matched to a labeled digit
  to_free_dims: float  # into another dimension matched to a held-out digit
  confusions: list[tuple[int, int, float]]  # (digit, digit of the dimension it went to,
                                            # share of that digit's images), largest first


def heldout_errors(assignment: np.ndarray, permutation: np.ndarray, *,
                   heldout_digits) -> HeldoutErrors:
  """assignment [10 digits, K dims] counts, permutation [K] (dimension -> digit)."""
  assignment = np.asarray(assignment, float)
  digit_of_dim = np.asarray(permutation)
  heldout = [int(d) for d in heldout_digits]
  if len(set(digit_of_dim.tolist())) != len(digit_of_dim):
    raise ValueError(f"permutation {digit_of_dim.tolist()}: expected each digit once.")
  rows = assignment[heldout]  # [H, K]
  total = rows.sum()
  if total == 0:
    raise ValueError(f"no test images of the held-out digits {heldout}.")
  goes_to = digit_of_dim[None, :]  # the digit each dimension stands for, [1, K]
  own = goes_to == np.asarray(heldout)[:, None]  # [H, K]
  into_heldout = np.isin(goes_to, heldout)
  confusions = [(d, int(digit_of_dim[k]), float(rows[i, k] / rows[i].sum()))
                for i, d in enumerate(heldout) for k in range(rows.shape[1])
                if not own[i, k] and rows[i, k] > 0]
  return HeldoutErrors(
      recall={d: float(rows[i][own[i]].sum() / rows[i].sum()) for i, d in enumerate(heldout)},
      to_matched=float(rows[own].sum() / total),
      to_labeled_dims=float(rows[:, ~into_heldout[0]].sum() / total),
      to_free_dims=float((rows * (into_heldout & ~own)).sum() / total),
      confusions=sorted(confusions, key=lambda c: -c[2]))


def variant(path: str) -> str:
  """The path without its seed: seed_3.json, seed_3/results.json and seed=3 name one seed."""
  return re.sub(r"seed[_=]\d+", "seed_*", path)


def table(runs: list[tuple[str, dict]]) -> str:
  heldout = runs[0][1]["heldout_digits"]
  head = ("| run | held-out acc. | into labeled dims | among free dims | "
          + " | ".join(f"recall {d}" for d in heldout) + " | largest confusions |")
  lines = [head, "|" + "---|" * (5 + len(heldout))]
  groups: dict[str, list[HeldoutErrors]] = collections.defaultdict(list)
  for path, r in runs:
    e = heldout_errors(r["test_digit_assignment"], r["mlp_semantic_permutation"],
                       heldout_digits=r["heldout_digits"])
    groups[variant(path)].append(e)
    top = ", ".join(f"{d}→{t}'s dim {s:.0%}" for d, t, s in e.confusions[:3])
    lines.append(f"| {path} | {e.to_matched:.3f} | {e.to_labeled_dims:.3f} | "
                 f"{e.to_free_dims:.3f} | "
                 + " | ".join(f"{e.recall[d]:.2f}" for d in heldout) + f" | {top} |")

  def cell(values):
    mean, half = stats.mean_and_interval(values)
    return f"{mean:.3f} ± {half:.3f}"

  for name, group in groups.items():
    lines.append(f"| **{name}: mean ± 95%, {len(group)} seeds** | "
                 f"{cell([e.to_matched for e in group])} | "
                 f"{cell([e.to_labeled_dims for e in group])} | "
                 f"{cell([e.to_free_dims for e in group])} | "
                 + " | ".join(f"{np.mean([e.recall[d] for e in group]):.2f}" for d in heldout)
                 + " | |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("roots", nargs="+")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  runs = list(report.results_files(args.roots, having="test_digit_assignment"))
  if not runs:
    parser.error(f"no results file with test_digit_assignment under {args.roots}")
  text = table(runs)
  if args.out:
    files.write_text(args.out, text)
  print(text)


if __name__ == "__main__":
  main()
