"""experiments/heldout_errors.py: held-out test errors split by the dimension they go to."""

import json
import subprocess
import sys

import numpy as np
import pytest

from repo_files import REPO
from repo_files import load_module
from untapped_jax.evaluate import semantic

heldout_errors = load_module(REPO / "experiments" / "heldout_errors.py")
HELDOUT = [5, 6, 7, 8, 9]


def random_run(seed):
  """Per-image labels and classifier dimensions, and a random dimension -> digit permutation."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, size=3000)
  dims = np.where(rng.random(3000) < 0.7, labels, rng.integers(0, 10, size=3000))
  perm = rng.permutation(10)
  dims = np.argsort(perm)[dims]  # so that perm[dim] is mostly the label
  assignment = np.zeros((10, 10), np.int64)
  for label, dim in zip(labels, dims):
    assignment[label, dim] += 1
  return labels, dims, perm, assignment


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shares_match_a_count_over_images(seed):
  labels, dims, perm, assignment = random_run(seed)
  e = heldout_errors.heldout_errors(assignment, perm, heldout_digits=HELDOUT)
  held = np.isin(labels, HELDOUT)
  # The matched share is the run's held-out accuracy, computed from the images themselves.
  assert e.to_matched == pytest.approx(
      semantic.permuted_accuracy(dims, labels, perm, digits=HELDOUT))
  for d in HELDOUT:
    assert e.recall[d] == pytest.approx(semantic.permuted_accuracy(dims, labels, perm, digits=[d]))
  went_to = perm[dims]
  assert e.to_labeled_dims == pytest.approx(np.mean(~np.isin(went_to[held], HELDOUT)))
  assert e.to_free_dims == pytest.approx(
      np.mean(np.isin(went_to[held], HELDOUT) & (went_to[held] != labels[held])))
  assert e.to_matched + e.to_labeled_dims + e.to_free_dims == pytest.approx(1.0)
  digit, target, share = e.confusions[0]
  brute = max(((d, t, np.mean(went_to[labels == d] == t)) for d in HELDOUT for t in range(10)
               if t != d), key=lambda c: c[2])
  assert (digit, target) == brute[:2] and share == pytest.approx(brute[2])


def test_a_digit_claimed_twice_is_refused():
  with pytest.raises(ValueError, match="each digit once"):
    heldout_errors.heldout_errors(np.ones((10, 10)), [0] * 10, heldout_digits=HELDOUT)


def test_table_has_one_summary_per_variant(tmp_path):
  for name, seeds in (("cb", range(3)), ("m2", range(2))):
    for s in seeds:
      _, _, perm, assignment = random_run(10 * s + len(name))
      (tmp_path / f"{name}_seed_{s}.json").write_text(json.dumps(
          {"test_digit_assignment": assignment.tolist(), "heldout_digits": HELDOUT,
           "mlp_semantic_permutation": perm.tolist()}))
  out = tmp_path / "table.md"
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "heldout_errors.py"),
                         str(tmp_path), "--out", str(out)], capture_output=True, text=True,
                        check=True)
  text = out.read_text()
  assert text in proc.stdout
  assert "cb_seed_*.json: mean ± 95%, 3 seeds" in text and "m2_seed_*.json: mean ± 95%, 2 seeds" in text
  assert len([l for l in text.splitlines() if l.startswith("| ")]) == 1 + 5 + 2


def test_no_results_is_one_line_and_no_file(tmp_path):
  out = tmp_path / "table.md"
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "heldout_errors.py"),
                         str(tmp_path), "--out", str(out)], capture_output=True, text=True)
  assert proc.returncode != 0 and "no results file with test_digit_assignment" in proc.stderr
  assert not out.exists()
