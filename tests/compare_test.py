"""compare.py: the t-intervals, the tables and the run loop (training faked)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import sys
import zlib

from absl import app
from absl import flags
import numpy as np
import pytest
import scipy.stats

from untapped_jax import compare

REPO = pathlib.Path(__file__).resolve().parents[1]
POSTER = REPO / "experiments" / "configs" / "poster.py"


def t_half_width(values):
  values = np.asarray(values, float)
  if np.all(values == values[0]):
    return 0.0
  lo, hi = scipy.stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                  scale=scipy.stats.sem(values))
  return (hi - lo) / 2


@pytest.mark.parametrize("values", [[0.5, 0.7, 0.65, 0.9], [1.0, 3.0],
                                    [0.91, 0.93, 0.92, 0.95, 0.90, 0.94, 0.96]])
def test_mean_and_interval_matches_scipy(values):
  mean, half = compare.mean_and_interval(values)
  assert mean == pytest.approx(np.mean(values), rel=1e-12)
  assert half == pytest.approx(t_half_width(values), rel=1e-9)
  assert half > 0


def test_mean_and_interval_edge_cases():
  mean, half = compare.mean_and_interval([0.7])
  assert mean == pytest.approx(0.7) and math.isnan(half)
  mean, half = compare.mean_and_interval([4, 4, 4])
  assert mean == 4.0 and half == 0.0
  # Two values: t(0.975, 1) = 12.706..., sem = |a - b| / 2.
  _, half = compare.mean_and_interval([0.0, 2.0])
  assert half == pytest.approx(12.7062047, rel=1e-6)


def fake_results(model: str, seed: int, *, distinct: int = 10) -> dict:
  rng = np.random.default_rng([zlib.crc32(model.encode()), seed])
  r = {m: float(rng.uniform(0, 1)) for m in compare.METRICS}
  for m in ("test_label_only_bound", "test_log_q_y_is", "test_unlabeled_bound",
            "test_labeled_elbo"):
    r[m] = float(rng.uniform(-120, -80))
  perm = rng.permutation(10).tolist()
  r.update(distinct_digits=distinct, seed=seed, num_steps=100 + seed,
           duplicated_digits=[] if distinct == 10 else [8, 3][:10 - distinct],
           semantic_permutation=perm)
  return r


def table_rows(md: str) -> list[list[str]]:
  return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
          if line.startswith("|")]


def test_comparison_tables():
  results = {"m2": [fake_results("m2", s, distinct=d) for s, d in enumerate([9, 10, 8])],
             "untapped": [fake_results("untapped", s) for s in range(2)]}
  md, table = compare.comparison_tables(results)

  rows = table_rows(md)
  summary = {r[0]: r for r in rows if r[0] in ("m2", "untapped") and len(r) ==
             len(compare.METRICS) + 3}
  assert set(summary) == {"m2", "untapped"}
  assert summary["m2"][1] == "3" and summary["untapped"][1] == "2"
  assert summary["m2"][-1] == "1/3" and summary["untapped"][-1] == "2/2"
  for model, runs in results.items():
    for i, metric in enumerate(compare.METRICS):
      values = [r[metric] for r in runs]
      digits = 1 if metric == "distinct_digits" else 3
      expected = f"{np.mean(values):.{digits}f} ± {t_half_width(values):.{digits}f}"
      assert summary[model][2 + i] == expected, (model, metric)
  # Every row of each markdown table has its header's number of cells.
  blocks = [b for b in md.split("\n\n") if b.startswith("|")]
  assert len(blocks) == 2
  for block in blocks:
    widths = {len(r) for r in table_rows(block)}
    assert len(widths) == 1, widths
  per_seed = [r for r in table_rows(blocks[1]) if r[0] in ("m2", "untapped")]
  assert [(r[0], r[1]) for r in per_seed] == [("m2", "0"), ("m2", "1"), ("m2", "2"),
                                               ("untapped", "0"), ("untapped", "1")]

  parsed = list(csv.DictReader(io.StringIO(table)))
  assert len(parsed) == 5
  assert [(r["model"], int(r["seed"])) for r in parsed] == [
      ("m2", 0), ("m2", 1), ("m2", 2), ("untapped", 0), ("untapped", 1)]
  flat = [r for model in ("m2", "untapped") for r in results[model]]
  for row, r in zip(parsed, flat):
    assert int(row["num_steps"]) == r["num_steps"]
    for metric in compare.METRICS:
      assert float(row[metric]) == pytest.approx(r[metric], rel=1e-12), metric
    assert [int(v) for v in row["semantic_permutation"].split()] == r["semantic_permutation"]
    assert [int(v) for v in row["duplicated_digits"].split()] == r["duplicated_digits"]


def test_comparison_tables_skip_models_without_runs():
  md, table = compare.comparison_tables({"m2": [], "untapped": [fake_results("untapped", 0)]})
  assert not [r for r in table_rows(md) if r[0] == "m2"]
  assert "| untapped | 1 |" in md
  assert "nan" in md  # one seed: no interval
  assert len(list(csv.DictReader(io.StringIO(table)))) == 1


# ----------------------------------------------------------------------------- main


def write_run(root: pathlib.Path, model: str, seed: int):
  run = root / model / f"seed_{seed}"
  run.mkdir(parents=True, exist_ok=True)
  (run / "results.json").write_text(json.dumps(fake_results(model, seed)))


@pytest.fixture
def invoke(monkeypatch):
  """Parses absl flags as the command line would and calls compare.main."""

  def call(*args):
    argv = ["untapped-compare", *args]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads --config.* from sys.argv
    flags.FLAGS.unparse_flags()
    remaining = flags.FLAGS(argv)
    compare.main(remaining)

  yield call
  flags.FLAGS.unparse_flags()


@pytest.fixture
def fake_training(monkeypatch):
  calls = []

  def train_and_evaluate(config, workdir):
    calls.append((config.model_name, config.seed, config.train.num_steps,
                  config.data.labeled_per_class, workdir))
    assert config.data.labeled_classes == (0, 1, 2, 3, 4)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(fake_results(config.model_name, config.seed), f)

  monkeypatch.setattr(compare.train, "train_and_evaluate", train_and_evaluate)
  return calls


def test_main_trains_only_missing_runs_and_writes_tables(tmp_path, invoke, fake_training,
                                                         capsys):
  for model, seed in [("m2", 0), ("m2", 1), ("untapped", 0)]:
    write_run(tmp_path, model, seed)
  before = (tmp_path / "m2" / "seed_0" / "results.json").read_text()
  # (No --config.* overrides: ml_collections defines a flag per override and cannot
  # parse the same override twice in one process.)
  common = [f"--workdir={tmp_path}", "--seeds=2", f"--config={POSTER}:runlocal,per_class=7"]
  invoke(*common)
  assert fake_training == [("untapped", 1, 20, 7, str(tmp_path / "untapped" / "seed_1"))]
  assert (tmp_path / "m2" / "seed_0" / "results.json").read_text() == before
  md = (tmp_path / "comparison.md").read_text()
  parsed = list(csv.DictReader(io.StringIO((tmp_path / "comparison.csv").read_text())))
  assert [(r["model"], r["seed"]) for r in parsed] == [("m2", "0"), ("m2", "1"),
                                                       ("untapped", "0"), ("untapped", "1")]
  assert "| m2 | 2 |" in md and "| untapped | 2 |" in md
  assert md in capsys.readouterr().out
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]

  # Second invocation: every results.json exists, nothing is trained again.
  invoke(*common)
  assert len(fake_training) == 1
  assert (tmp_path / "comparison.md").read_text() == md

  # A third seed with --models untapped trains untapped only.
  invoke(f"--workdir={tmp_path}", "--seeds=3", "--models=untapped",
         f"--config={POSTER}:runlocal")
  assert [c[:4] for c in fake_training[1:]] == [("untapped", 2, 20, 100)]
  parsed = list(csv.DictReader(io.StringIO((tmp_path / "comparison.csv").read_text())))
  assert len(parsed) == 5


def test_main_report_only_trains_nothing(tmp_path, invoke, fake_training):
  for model, seed in [("m2", 0), ("m2", 2), ("untapped", 1)]:
    write_run(tmp_path, model, seed)
  invoke(f"--workdir={tmp_path}", "--seeds=3", "--report_only", f"--config={POSTER}")
  assert fake_training == []
  assert not (tmp_path / "untapped" / "seed_0").exists()
  parsed = list(csv.DictReader(io.StringIO((tmp_path / "comparison.csv").read_text())))
  assert [(r["model"], r["seed"]) for r in parsed] == [("m2", "0"), ("m2", "2"),
                                                       ("untapped", "1")]
  md = (tmp_path / "comparison.md").read_text()
  assert "| m2 | 2 |" in md and "| untapped | 1 |" in md


def test_main_rejects_unknown_model(tmp_path, invoke, fake_training):
  with pytest.raises(app.UsageError, match="m3"):
    invoke(f"--workdir={tmp_path}", "--models=m2,m3", f"--config={POSTER}")
  assert fake_training == []
