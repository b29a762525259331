r"""Learning curves of the semantic figures (distinct digits, held-out accuracy, gate).

  python experiments/curves.py --out docs/figures/curves.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Each RUN_DIR holds a metrics.jsonl written with eval.semantic_curve=True.
"""

import argparse
import json
import os

from untapped_jax.evaluate import figures


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
  parser.add_argument("--out", required=True)
  parser.add_argument("--title", default="")
  args = parser.parse_args()
  runs = {}
  for item in args.runs:
    label, sep, workdir = item.partition("=")
    if not sep:
      parser.error(f"{item!r}: expected LABEL=RUN_DIR")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      runs[label] = [json.loads(line) for line in f if line.strip()]
  figures.metric_curves(runs, args.out, keys=figures.CURVE_METRICS, title=args.title)


if __name__ == "__main__":
  main()
