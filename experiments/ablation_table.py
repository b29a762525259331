r"""Markdown table of the semantic results of several run folders.

  python experiments/ablation_table.py runs/probe/*/
"""

import json
import os
import sys

COLUMNS = ("num_steps", "distinct_digits", "duplicated_digits", "heldout_accuracy",
           "seen_accuracy", "self_consistency", "test_label_only_bound", "test_log_q_y_is",
           "label_only_gap")


def row(workdir: str) -> str:
  with open(os.path.join(workdir, "results.json")) as f:
    r = json.load(f)
  with open(os.path.join(workdir, "config.json")) as f:
    c = json.load(f)
  o = c["objective"]
  setting = c["model_name"] if c["model_name"] == "m2" else (
      f"untapped λ={o['label_only_weight']:g}, q(x)={o['image_prior']}, x={o['x_estimator']}")
  cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in COLUMNS]
  name = os.path.relpath(os.path.normpath(workdir), "runs")
  return f"| {name} | {setting} | " + " | ".join(cells) + " |"


def main(workdirs):
  done = [w for w in workdirs if os.path.exists(os.path.join(w, "results.json"))]
  print("| run | setting | " + " | ".join(COLUMNS) + " |")
  print("|---" * (len(COLUMNS) + 2) + "|")
  for w in sorted(done):
    print(row(w))


if __name__ == "__main__":
  main(sys.argv[1:])
