"""experiments/claim_verdict.py: issue 13's goal counted from per-seed results."""

import json
import subprocess
import sys

from repo_files import REPO
from repo_files import load_module


claim_verdict = load_module(REPO / "experiments" / "claim_verdict.py")


def result(mlp=10, authors=10, gate=True, heldout=0.95):
  return {"mlp_distinct_digits": mlp, "mlp_authors_distinct_digits": authors,
          "gate_passed": gate, "gate_seen_agreement": 0.93 if gate else 0.85,
          "mlp_heldout_accuracy": heldout, "mlp_semantic_permutation": list(range(10)),
          "num_steps": 12000}


def goal_row(text, name):
  return next(l for l in text.splitlines() if l.startswith(f"| {name} | ") and "of" in l)


def test_goal_needs_nine_in_ten_every_gate_and_ninety_percent():
  ten = {s: result(heldout=0.9 + 0.01 * (s % 3)) for s in range(10)}
  one_short = {**ten, 3: result(authors=9, heldout=0.90)}  # 9 of 10 with ten digits: still met
  two_short = {**one_short, 4: result(mlp=9, heldout=0.91)}
  gate_fails = {**ten, 0: result(gate=False)}
  low = {s: result(heldout=0.85) for s in range(10)}
  text = claim_verdict.verdict({"ten": ten, "one_short": one_short, "two_short": two_short,
                                "gate_fails": gate_fails, "low": low, "none": {}})
  assert goal_row(text, "ten").endswith("| 10 of 10 | 10 of 10 | 0.909 ± 0.006 | yes |")
  assert goal_row(text, "one_short").endswith("| 9 of 10 | 10 of 10 | 0.909 ± 0.006 | yes |")
  assert "| 8 of 10 |" in goal_row(text, "two_short") and goal_row(text, "two_short").endswith("no |")
  assert "| 9 of 10 | 0.9" in goal_row(text, "gate_fails") and goal_row(text, "gate_fails").endswith("no |")
  assert goal_row(text, "low").endswith("| 0.850 ± 0.000 | no |")
  assert "| none |" not in text  # a variant with no finished seed has no row
  assert "| two_short | 4 | 9 | 10 | 0.930 | pass | 0.910 | 0 1 2 3 4 5 6 7 8 9 |" in text


def test_named_run_folders_merge_into_one_variant_and_bad_specs_are_one_line(tmp_path):
  for folder, seeds in (("m2_a", (0, 1)), ("m2_b", (2, 3)), ("cb", (0, 1, 2))):
    for s in seeds:
      (tmp_path / folder / f"seed_{s}").mkdir(parents=True)
      r = result(mlp=6, authors=6, gate=False, heldout=0.1) if folder.startswith("m2") else result()
      (tmp_path / folder / f"seed_{s}" / "results.json").write_text(json.dumps(r))
  (tmp_path / "m2_b" / "seed_4").mkdir()  # unfinished: no results.json
  script = str(REPO / "experiments" / "claim_verdict.py")
  proc = subprocess.run([sys.executable, script, f"--runs=M2={tmp_path / 'm2_a'}",
                         f"--runs=M2={tmp_path / 'm2_b'}", f"--runs=cb={tmp_path / 'cb'}",
                         "--reference=M2"], capture_output=True, text=True, check=True)
  assert goal_row(proc.stdout, "M2").startswith("| M2 | 4 | 0 of 4 | 0 of 4 | 0.100 ± 0.000 | no")
  assert goal_row(proc.stdout, "cb").startswith("| cb | 3 | 3 of 3 | 3 of 3 | 0.950 ± 0.000 | yes")
  # Paired over the seeds both have (0, 1, 2): +4 digits, +0.85 held-out, no spread.
  paired = proc.stdout.split("Paired differences")[1]
  row = next(l for l in paired.splitlines() if l.startswith("| cb | 3 |"))
  assert row.startswith("| cb | 3 | 4.000 ± 0.000 |") and "0.850 ± 0.000" in row, row
  bad = subprocess.run([sys.executable, script, f"--runs=M2{tmp_path}"], capture_output=True,
                       text=True, check=False)
  assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
  assert "NAME=FOLDER" in bad.stderr


def test_committed_copies_are_read_by_glob_with_the_seed_from_the_name(tmp_path):
  # The docs/results form: <variant>_seed_<s>.json files; the seed comes from the name.
  for s in (0, 1, 7):
    (tmp_path / f"cb_seed_{s}.json").write_text(json.dumps(result(heldout=0.9 + 0.01 * s)))
  (tmp_path / "cb_summary.json").write_text(json.dumps(result(heldout=0.0)))  # no seed: skipped
  runs = claim_verdict.named_runs([f"cb={tmp_path}/cb_*.json"])
  assert sorted(runs["cb"]) == [0, 1, 7]
  assert runs["cb"][7]["mlp_heldout_accuracy"] == 0.97
  script = str(REPO / "experiments" / "claim_verdict.py")
  bad = subprocess.run([sys.executable, script, f"--runs=cb={tmp_path}/m2_*.json"],
                       capture_output=True, text=True, check=False)
  assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
  assert "m2_*.json" in bad.stderr and "seed_<s>.json" in bad.stderr
