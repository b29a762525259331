"""tables.seed_tables: per-variant means with Student-t half-widths computed here with
scipy.stats.t, paired differences over the seeds both variants finished, and the CSV rows,
on hand-made results."""

from __future__ import annotations

import csv
import io

import numpy as np
import scipy.stats

from untapped_jax import tables


M2_NAME, U_NAME = "model_name=m2", "model_name=untapped"
# Hand-made results: m2 over seeds 0-2; untapped over seeds 0-3 (seed 3 is unpaired).
M2_VALUES = {"mlp_distinct_digits": [5, 6, 5], "heldout_accuracy": [0.10, 0.15, 0.11],
             "gate_passed": [True, True, False]}
U_VALUES = {"mlp_distinct_digits": [7, 6, 9, 10], "heldout_accuracy": [0.30, 0.20, 0.40, 0.9],
            "gate_passed": [True, False, True, True]}


def make_results():
  def runs(values):
    n = len(next(iter(values.values())))
    return {s: {"num_steps": 100 + s, **{m: v[s] for m, v in values.items()}}
            for s in range(n)}
  return {M2_NAME: runs(M2_VALUES), U_NAME: runs(U_VALUES)}


def t_cell(values) -> str:
  v = np.asarray(values, float)
  half = scipy.stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
  return f"{v.mean():.3f} ± {half:.3f}"


def table_rows(md: str, header_start: str) -> dict[str, list[str]]:
  """name -> cells of the table whose header line starts with `header_start`."""
  lines = md.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith(header_start))
  header = [c.strip() for c in lines[start].strip("|").split("|")]
  rows = {}
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip("|").split("|")]
    rows[cells[0]] = dict(zip(header, cells))
  return rows


def summary_rows(md):
  return table_rows(md, "| variant | seeds |")


def test_summary_cells_are_mean_and_t_half_width():
  md, _ = tables.seed_tables(make_results(), reference="")
  rows = summary_rows(md)
  for name, values in ((M2_NAME, M2_VALUES), (U_NAME, U_VALUES)):
    assert rows[name]["seeds"] == str(len(values["heldout_accuracy"]))
    for metric, v in values.items():
      assert rows[name][metric] == t_cell(v), (name, metric)
  assert rows[U_NAME]["gate_passed"].startswith("0.750 ± ")  # the share of seeds passing


def test_hand_computed_t_interval_value():
  # 3 seeds: t_{0.975, 2} = 4.303; sd of (5, 6, 5) = 0.5774; 4.303 * 0.5774 / sqrt 3 = 1.434.
  md, _ = tables.seed_tables(make_results())
  assert summary_rows(md)[M2_NAME]["mlp_distinct_digits"] == "5.333 ± 1.434"


def test_metric_missing_from_all_runs_is_not_a_column():
  md, table = tables.seed_tables(make_results(), reference=M2_NAME)
  header = md.splitlines()[0]
  for metric in ("self_consistency", "test_accuracy", "owned_digits"):
    assert metric not in header
  assert next(csv.reader(io.StringIO(table))) == [
      "variant", "seed", "num_steps", "gate_passed", "mlp_distinct_digits",
      "heldout_accuracy", "mlp_semantic_permutation", "authors_permutation"]


def test_metric_present_in_one_variant_leaves_other_cells_empty():
  results = make_results()
  for s, r in results[U_NAME].items():
    r["test_accuracy"] = 0.9 + 0.01 * s
  rows = summary_rows(tables.seed_tables(results)[0])
  assert rows[M2_NAME]["test_accuracy"] == ""
  assert rows[U_NAME]["test_accuracy"] == t_cell([0.9, 0.91, 0.92, 0.93])


def test_single_seed_variant_has_no_interval():
  results = {"model_name=m2": {4: {"num_steps": 1, "heldout_accuracy": 0.25}}}
  assert summary_rows(tables.seed_tables(results)[0])["model_name=m2"][
      "heldout_accuracy"] == "0.250"


def test_paired_differences_use_seeds_finished_in_both():
  md, _ = tables.seed_tables(make_results(), reference="model_name=m2")
  rows = table_rows(md[md.index("Paired differences"):], "| variant | seeds |")
  assert set(rows) == {U_NAME}  # the reference itself has no row
  assert rows[U_NAME]["seeds"] == "3"
  for metric in ("mlp_distinct_digits", "heldout_accuracy"):
    diffs = np.subtract(U_VALUES[metric][:3], M2_VALUES[metric])
    assert rows[U_NAME][metric] == t_cell(diffs), metric
  # Hand check: distinct digits differ by (2, 0, 4): mean 2, sd 2, 4.303 * 2 / sqrt 3 = 4.968.
  assert rows[U_NAME]["mlp_distinct_digits"] == "2.000 ± 4.968"
  assert "gate_passed" not in rows[U_NAME]  # not a paired metric


def test_no_paired_table_without_a_matching_reference():
  for reference in ("", "model_name=m3", "m2"):
    md, _ = tables.seed_tables(make_results(), reference=reference)
    assert "Paired differences" not in md


def test_csv_has_one_row_per_variant_and_seed():
  results = make_results()
  results[U_NAME][0]["mlp_semantic_permutation"] = [1, 0, 2]
  _, table = tables.seed_tables(results, reference=M2_NAME)
  rows = list(csv.DictReader(io.StringIO(table)))
  assert [(r["variant"], r["seed"]) for r in rows] == [
      (M2_NAME, "0"), (M2_NAME, "1"), (M2_NAME, "2"),
      (U_NAME, "0"), (U_NAME, "1"), (U_NAME, "2"), (U_NAME, "3")]
  for r in rows:
    values = M2_VALUES if r["variant"] == M2_NAME else U_VALUES
    seed = int(r["seed"])
    assert r["num_steps"] == str(100 + seed)
    assert float(r["heldout_accuracy"]) == values["heldout_accuracy"][seed]
    assert r["gate_passed"] == str(values["gate_passed"][seed])
  assert rows[3]["mlp_semantic_permutation"] == "1 0 2"
  assert rows[0]["mlp_semantic_permutation"] == ""
