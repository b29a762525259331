r"""`untapped-report`: a Markdown report of runs, with tables and figures.

  untapped-report runs/m2_100x5 runs/screen [--out runs/report] [--metrics a,b] \
      [--reference model_name=m2]

Each DIR is a run folder (it holds results.json), or a folder of them: a
num_seeds run (DIR/seed_<s>/) or a sweep (DIR/<variant>/seed_<s>/). Runs whose
folders are named seed_<s> group by their parent into one variant, tabulated with
the mean and 95% interval over seeds (tables.seed_tables). The report
(OUT/report.md) holds that table, learning curves of the bounds and accuracies
from metrics.jsonl, and links to each run's sample grid; it reads without
TensorBoard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

from untapped_jax import files
from untapped_jax import metric_writer
from untapped_jax import tables
from untapped_jax.evaluate import figures


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


def results_files(roots, *, having: str):
  """(path, results) of every JSON file under the roots holding key `having`, in path order:
  run folders' results.json and their copies under docs/results alike."""
  for root in roots:
    for folder, dirs, names in sorted(os.walk(root)):
      dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "populations", "tensorboard"))
      for name in sorted(n for n in names if n.endswith(".json")):
        with open(os.path.join(folder, name)) as f:
          results = json.load(f)
        if isinstance(results, dict) and having in results:
          yield os.path.relpath(os.path.join(folder, name)), results


def write_report(roots, out: str, *, metrics=(), reference: str = "") -> str:
  """Writes OUT/report.md (and its figures); returns the Markdown."""
  runs = find_runs(roots)
  results = {v: {s: metric_writer.read_results(d) for s, d in seeds.items()}
             for v, seeds in runs.items()}
  known = {k for seeds in results.values() for r in seeds.values() for k in r}
  unknown = [m for m in metrics if m not in known]
  if unknown:
    raise ValueError(f"--metrics {','.join(unknown)}: not in any run's results; these runs "
                     f"have {', '.join(sorted(known))}.")
  os.makedirs(out, exist_ok=True)
  md_table, csv_table = tables.seed_tables(results, reference=reference,
                                           metrics=tuple(metrics) or REPORT_METRICS + tables.METRICS)
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
    if records and figures.metric_curves(records, os.path.join(out, figure), title=variant):
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
  try:
    md = write_report(roots, out, metrics=f.metrics or (), reference=f.reference)
  except (FileNotFoundError, ValueError) as e:  # one line, as every start-up error
    print(f"untapped-report: {e}", file=sys.stderr)
    return 2
  print(md)
  print(f"written to {out}/report.md")
  return 0


def run():
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("out", "", "Folder of the report (default: FIRST_DIR/report).")
  flags.DEFINE_list("metrics", None, "Final metrics to tabulate (default: every known one).")
  flags.DEFINE_string("reference", "", "Variant for paired differences, e.g. model_name=m2.")
  app.run(main)


if __name__ == "__main__":
  run()
