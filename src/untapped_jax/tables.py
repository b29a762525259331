"""Tables over seeds: per variant the mean and 95% t-interval of each metric, paired
differences against a reference variant, and one row per variant and seed (Markdown and
CSV). The one table code path of sweeps, num_seeds runs and reports."""

from __future__ import annotations

import csv
import io

import numpy as np

from untapped_jax import stats

# The study's metrics, in the order of the columns.
METRICS = ("gate_passed", "distinct_digits", "mlp_distinct_digits", "authors_distinct_digits",
           "mlp_authors_distinct_digits", "owned_digits", "mlp_owned_digits",
           "matched_agreement", "mlp_matched_agreement", "dimension_digit_mi",
           "mlp_dimension_digit_mi", "gate_seen_agreement", "heldout_accuracy",
           "mlp_heldout_accuracy", "authors_heldout_accuracy", "self_consistency",
           "test_accuracy", "test_label_only_bound", "test_log_q_y_direct",
           "test_unlabeled_bound")
PAIRED = ("mlp_distinct_digits", "distinct_digits", "authors_distinct_digits",
          "mlp_heldout_accuracy", "heldout_accuracy", "mlp_matched_agreement",
          "self_consistency")


def _cell(value) -> str:
  return f"{value:.3f}" if isinstance(value, float) else str(value)


def _fmt(mean: float, half: float) -> str:
  return f"{mean:.3f} ± {half:.3f}" if np.isfinite(half) else f"{mean:.3f}"


def seed_tables(results: dict[str, dict[int, dict]], *, reference: str = "",
                 metrics=METRICS) -> tuple[str, str]:
  """(markdown, csv): summary per variant, paired differences, per-seed rows."""
  present = [m for m in metrics
             if any(m in r for runs in results.values() for r in runs.values())]
  md = ["| variant | seeds | " + " | ".join(present) + " |", "|---" * (len(present) + 2) + "|"]
  for name, runs in results.items():
    if not runs:
      continue
    cells = [_fmt(*stats.mean_and_interval([float(r[m]) for r in runs.values() if m in r]))
             if any(m in r for r in runs.values()) else "" for m in present]
    md.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
  md += ["", "Mean ± half-width of the 95% t-interval over seeds (gate_passed: the share "
         "of seeds that pass the gate).", ""]
  ref = next((n for n in results if reference and reference in n.split(",")), None)
  if ref is not None:
    paired = [m for m in PAIRED if m in present] or present
    md += [f"Paired differences, variant minus `{ref}`, over the seeds both finished:", "",
           "| variant | seeds | " + " | ".join(paired) + " |", "|---" * (len(paired) + 2) + "|"]
    for name, runs in results.items():
      seeds = sorted(set(runs) & set(results[ref]))
      if name == ref or not seeds:
        continue
      cells = []
      for m in paired:
        diffs = [float(runs[s][m]) - float(results[ref][s][m]) for s in seeds
                 if m in runs[s] and m in results[ref][s]]
        cells.append(_fmt(*stats.mean_and_interval(diffs)) if diffs else "")
      md.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")
    md.append("")
  semantic = any("mlp_semantic_permutation" in r for runs in results.values()
                 for r in runs.values())
  extra = ["mlp permutation (dim→digit)", "authors' permutation"] if semantic else []
  md += ["| variant | seed | steps | " + " | ".join(present + extra) + " |",
         "|---" * (3 + len(present) + len(extra)) + "|"]
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(["variant", "seed", "num_steps", *present, "mlp_semantic_permutation",
                   "authors_permutation"])
  for name, runs in results.items():
    for seed, r in sorted(runs.items()):
      cells = [_cell(r.get(m, "")) for m in present]
      if semantic:
        cells += [str(r.get("mlp_semantic_permutation", "")), str(r.get("authors_permutation", ""))]
      md.append(f"| {name} | {seed} | {r['num_steps']} | " + " | ".join(cells) + " |")
      writer.writerow([name, seed, r["num_steps"], *[r.get(m, "") for m in present],
                       " ".join(map(str, r.get("mlp_semantic_permutation", []))),
                       " ".join(map(str, r.get("authors_permutation", [])))])
  return "\n".join(md) + "\n", buf.getvalue()
