r"""Why a digit goes missing: what each dimension generates and where the real digit goes.

  python experiments/missing_digits.py --digit 9 [--out docs/results/missing_9.md] RUN_DIR ...

For every run result under the folders (a results.json with the semantic evaluation):
the MLP evaluator's histogram of each dimension's samples (rows of `mlp_confusion`,
dimension -> digit) for the dimension of the labeled digit most confused with the
missing one and for the free dimensions, and the classifier's dimension for the real
test images of that digit (`test_digit_assignment`, runs evaluated since it was added).
"""

from __future__ import annotations

import argparse

import numpy as np

from untapped_jax import files
from untapped_jax import report


def describe(folder: str, r: dict, digit: int) -> str:
  confusion = np.asarray(r["mlp_confusion"], float)  # [dims, digits], counts of M samples
  shares = confusion / confusion.sum(1, keepdims=True)
  holder = int(np.argmax(shares[:5, digit]))  # the labeled dimension that generates it most
  free = [k for k in range(5, len(shares))]
  cells = [f"dim {holder}: {shares[holder, digit]:.0%} {digit}s"]
  for k in free:
    top = np.argsort(shares[k])[::-1][:2]
    cells.append(f"dim {k}: " + ", ".join(f"{shares[k, d]:.0%} {d}s" for d in top))
  assignment = r.get("test_digit_assignment")
  where = ""
  if assignment is not None:
    row = np.asarray(assignment[digit], float)
    top = np.argsort(row)[::-1][:3]
    where = ", ".join(f"dim {k}: {row[k] / row.sum():.0%}" for k in top)
  missing = r.get("mlp_missing_digits", [])
  return (f"| {folder} | {r.get('mlp_distinct_digits')} | {missing} | "
          + "; ".join(cells) + f" | {where} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("roots", nargs="+")
  parser.add_argument("--digit", type=int, default=9)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  if not 0 <= args.digit <= 9:
    parser.error(f"--digit {args.digit}: expected 0-9")
  lines = [f"| run | distinct (MLP) | missing | what the dimensions generate (MLP evaluator) "
           f"| real test {args.digit}s go to (classifier) |", "|---|---|---|---|---|"]
  lines += [describe(folder, r, args.digit)
            for folder, r in report.results_files(args.roots, having="mlp_confusion")]
  if len(lines) == 2:
    parser.error(f"no run with a semantic evaluation under {args.roots}")
  text = "\n".join(lines) + "\n"
  if args.out:
    files.write_text(args.out, text)
  print(text)


if __name__ == "__main__":
  main()
