r"""Trains M2 and Untapped on the poster split over S seeds and tabulates them.

  untapped-compare --workdir runs/compare [--seeds 5] [--models m2,untapped]
                   [--config experiments/configs/poster.py] [--config.train.num_steps=...]

Runs go to WORKDIR/MODEL/seed_S; a run whose results.json exists is not repeated, so
several processes (e.g. one per model, --models untapped) can share a workdir and a
final `--report_only` writes the tables: comparison.md and comparison.csv.
"""

from __future__ import annotations

import csv
import io
import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
from untapped_jax import files
from untapped_jax.stats import mean_and_interval
from untapped_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join("experiments", "configs", "poster.py"),
    "Poster config; model_name and seed are set per run.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Root folder of the comparison.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds 0..S-1, identical for both models.")
_MODELS = flags.DEFINE_list("models", ["m2", "untapped"], "Models to train.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only tabulate existing runs.")
flags.mark_flags_as_required(["workdir"])

METRICS = ("distinct_digits", "heldout_accuracy", "seen_accuracy", "self_consistency",
           "test_accuracy", "permuted_test_accuracy", "test_label_only_bound",
           "test_log_q_y_is", "label_only_gap", "test_unlabeled_bound", "test_labeled_elbo")


def run_dir(root: str, model: str, seed: int) -> str:
  return os.path.join(root, model, f"seed_{seed}")


def load_results(root: str, models, seeds: int) -> dict[str, list[dict]]:
  out = {}
  for model in models:
    runs = []
    for seed in range(seeds):
      path = os.path.join(run_dir(root, model, seed), "results.json")
      if os.path.exists(path):
        with open(path) as f:
          runs.append(json.load(f))
    out[model] = runs
  return out


def comparison_tables(results: dict[str, list[dict]]) -> tuple[str, str]:
  """(markdown, csv) of per-model summaries and per-seed rows."""
  md = ["| model | seeds | " + " | ".join(METRICS) + " | all 10 digits |",
        "|---" * (len(METRICS) + 3) + "|"]
  for model, runs in results.items():
    if not runs:
      continue
    cells = []
    for m in METRICS:
      mean, half = mean_and_interval([r[m] for r in runs])
      cells.append(f"{mean:.3f} ± {half:.3f}" if m != "distinct_digits"
                   else f"{mean:.1f} ± {half:.1f}")
    full = sum(r["distinct_digits"] == 10 for r in runs)
    md.append(f"| {model} | {len(runs)} | " + " | ".join(cells) + f" | {full}/{len(runs)} |")
  md += ["", "Mean ± half-width of the 95% t-interval over seeds.", "",
         "| model | seed | steps | distinct | duplicated | permutation (dim→digit) | "
         "heldout | self-consistency | test acc |", "|---" * 9 + "|"]
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(["model", "seed", "num_steps", *METRICS, "duplicated_digits",
                   "semantic_permutation"])
  for model, runs in results.items():
    for r in runs:
      md.append(f"| {model} | {r['seed']} | {r['num_steps']} | {r['distinct_digits']} | "
                f"{r['duplicated_digits']} | {r['semantic_permutation']} | "
                f"{r['heldout_accuracy']:.3f} | {r['self_consistency']:.3f} | "
                f"{r['test_accuracy']:.3f} |")
      writer.writerow([model, r["seed"], r["num_steps"], *[r[m] for m in METRICS],
                       " ".join(map(str, r["duplicated_digits"])),
                       " ".join(map(str, r["semantic_permutation"]))])
  return "\n".join(md) + "\n", buf.getvalue()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  root, base = _WORKDIR.value, _CONFIG.value
  bad = [m for m in _MODELS.value if m not in ("m2", "untapped")]
  if bad:
    raise app.UsageError(f"--models {bad}: expected m2 and/or untapped.")
  if not _REPORT_ONLY.value:
    for seed in range(_SEEDS.value):
      for model in _MODELS.value:
        workdir = run_dir(root, model, seed)
        if os.path.exists(os.path.join(workdir, "results.json")):
          logging.info("%s exists, skipping", workdir)
          continue
        config = base.copy_and_resolve_references()
        config.model_name, config.seed = model, seed
        train.train_and_evaluate(config, workdir)
  md, table = comparison_tables(load_results(root, ("m2", "untapped"), _SEEDS.value))
  files.write_text(os.path.join(root, "comparison.md"), md)
  files.write_text(os.path.join(root, "comparison.csv"), table)
  print(md)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
