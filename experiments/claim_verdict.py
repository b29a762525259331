r"""Issue 13's goal, checked run by run: the poster's claim at full strength.

  python experiments/claim_verdict.py --config "experiments/configs/poster.py:sweep=claim,seeds=10" \
      --workdir runs/study/claim [--out docs/results/claim/verdict.md]
  python experiments/claim_verdict.py --runs M2=runs/study/length_m2 \
      --runs M2=runs/study/length_m2_from_2 --runs class_balance=FOLDER [--reference M2]

A sweep's variants (--config, --workdir), or named folders of seed_<s>/results.json runs
(--runs NAME=FOLDER, repeatable; folders given the same name are one variant), or their
copies under docs/results (--runs "NAME=docs/results/length/m2_12000_seed_*.json"), or both.

Per variant, over the seeds that finished: how many have ten distinct digits under the MLP
evaluator AND under the authors' protocol (goal: at least 9 of 10), how many pass the gate
(goal: all), and the mean held-out 5-9 accuracy with its 95% interval (goal: >= 0.90); then
each seed's figures and permutation, so a miss can be read off the seed that misses.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

from untapped_jax import files
from untapped_jax import metric_writer
from untapped_jax import stats
from untapped_jax import tables
from untapped_jax import sweep

TEN = ("mlp_distinct_digits", "mlp_authors_distinct_digits")


def verdict(results: dict[str, dict[int, dict]]) -> str:
  """Markdown: the goal table, then one row per variant and seed."""
  lines = ["| variant | seeds | ten digits, MLP and authors' protocol | gate passed | "
           "held-out 5-9 (MLP evaluator) | goal met |", "|---|---|---|---|---|---|"]
  rows = ["| variant | seed | MLP digits | authors' protocol (MLP) | gate agreement | gate | "
          "held-out 5-9 | permutation (dim -> digit) |", "|---|---|---|---|---|---|---|---|"]
  for name, by_seed in results.items():
    seeds = sorted(by_seed)
    if not seeds:
      continue
    ten = [all(by_seed[s][k] == 10 for k in TEN) for s in seeds]
    gate = [bool(by_seed[s]["gate_passed"]) for s in seeds]
    heldout = [by_seed[s]["mlp_heldout_accuracy"] for s in seeds]
    mean, half = stats.mean_and_interval(heldout)
    met = sum(ten) >= 0.9 * len(seeds) and all(gate) and mean >= 0.9
    lines.append(f"| {name} | {len(seeds)} | {sum(ten)} of {len(seeds)} | {sum(gate)} of "
                 f"{len(seeds)} | {mean:.3f} ± {half:.3f} | {'yes' if met else 'no'} |")
    for s in seeds:
      r = by_seed[s]
      rows.append(f"| {name} | {s} | {r['mlp_distinct_digits']} | "
                  f"{r['mlp_authors_distinct_digits']} | {r['gate_seen_agreement']:.3f} | "
                  f"{'pass' if r['gate_passed'] else 'fail'} | {r['mlp_heldout_accuracy']:.3f} | "
                  f"{' '.join(map(str, r.get('mlp_semantic_permutation', [])))} |")
  return "\n".join(lines + [""] + rows) + "\n"


def named_runs(specs: list[str]) -> dict[str, dict[int, dict]]:
  """NAME=FOLDER or NAME=GLOB specs -> NAME -> seed -> results.

  FOLDER holds seed_<s>/results.json runs; GLOB (with a '*') matches results files whose
  names carry the seed as seed_<s>, such as the copies under docs/results, so that a
  verdict is redone from the committed files once the run folders are gone.
  """
  out: dict[str, dict[int, dict]] = {}
  for spec in specs:
    name, sep, where = spec.partition("=")
    if "*" in where and sep and name:
      seeded = [(m, p) for p in sorted(glob.glob(where))
                if (m := re.search(r"seed_(\d+)\.json$", p))]
      if not seeded:
        raise SystemExit(f"--runs {spec!r}: no file matching {where!r} ends in seed_<s>.json.")
      for match, path in seeded:
        with open(path) as f:
          out.setdefault(name, {})[int(match[1])] = json.load(f)
      continue
    if not sep or not name or not os.path.isdir(where):
      raise SystemExit(f"--runs {spec!r}: expected NAME=FOLDER with FOLDER an existing folder "
                       "of seed_<s>/results.json runs, or NAME=GLOB of *seed_<s>.json files.")
    for entry in sorted(os.listdir(where)):
      match = re.fullmatch(r"seed_(\d+)", entry)
      if match and os.path.exists(os.path.join(where, entry, "results.json")):
        out.setdefault(name, {})[int(match[1])] = metric_writer.read_results(
            os.path.join(where, entry))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="", help="the sweep's FILE:ARG")
  parser.add_argument("--workdir", default="", help="the sweep's root folder")
  parser.add_argument("--runs", action="append", default=[], metavar="NAME=FOLDER")
  parser.add_argument("--reference", default="", metavar="NAME",
                      help="also the sweep table: every metric per variant, and paired "
                           "differences against this variant over the seeds both finished")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  if bool(args.config) != bool(args.workdir) or not (args.config or args.runs):
    parser.error("give --config and --workdir (a sweep), or --runs NAME=FOLDER, or both")
  results = (sweep.load_results(args.workdir, sweep.load_points(args.config))
             if args.config else {})
  for name, by_seed in named_runs(args.runs).items():
    results.setdefault(name, {}).update(by_seed)
  text = verdict(results)
  if args.reference:
    text += "\n" + tables.seed_tables(results, reference=args.reference)[0]
  if args.out:
    files.write_text(args.out, text)
  print(text)


if __name__ == "__main__":
  main()
