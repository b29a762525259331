"""Tests of sweep.py: the hyper helpers, loading a config's points, folders, tables
and the sharded runner.

Expected points are written out by hand; the tables are checked against means and
Student-t half-widths computed here with scipy.stats.t; the runner is driven with a
fake train_and_evaluate that only records its calls.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from untapped_jax import files
from untapped_jax import population
from untapped_jax import sweep
from untapped_jax.sweep import Hyper

from real_mnist import DATA_DIR
from repo_files import POSTER
from repo_files import load_module


poster = load_module(POSTER, "poster_config_for_sweep")


# ----------------------------------------------------------------------------- Hyper


def test_sweep_is_one_dict_per_value():
  assert Hyper.sweep("config.seed", [0, 1, 2]) == [
      {"config.seed": 0}, {"config.seed": 1}, {"config.seed": 2}]
  assert Hyper.sweep("config.a", []) == []


def test_product_is_every_combination_first_key_slowest():
  got = Hyper.product([Hyper.sweep("config.a", [1, 2]),
                       Hyper.sweep("config.b", ["x", "y", "z"])])
  assert got == [{"config.a": 1, "config.b": "x"}, {"config.a": 1, "config.b": "y"},
                 {"config.a": 1, "config.b": "z"}, {"config.a": 2, "config.b": "x"},
                 {"config.a": 2, "config.b": "y"}, {"config.a": 2, "config.b": "z"}]


def test_product_of_zipit_merges_dicts():
  got = Hyper.product([Hyper.sweep("config.s", [0, 1]),
                       Hyper.zipit([Hyper.sweep("config.m", ["a", "b"]),
                                    Hyper.sweep("config.w", [0.5, 2.0])])])
  assert got == [{"config.s": 0, "config.m": "a", "config.w": 0.5},
                 {"config.s": 0, "config.m": "b", "config.w": 2.0},
                 {"config.s": 1, "config.m": "a", "config.w": 0.5},
                 {"config.s": 1, "config.m": "b", "config.w": 2.0}]


def test_zipit_pairs_elementwise():
  got = Hyper.zipit([Hyper.sweep("config.a", [1, 2, 3]), Hyper.sweep("config.b", [4, 5, 6]),
                     Hyper.sweep("config.c", ["p", "q", "r"])])
  assert got == [{"config.a": 1, "config.b": 4, "config.c": "p"},
                 {"config.a": 2, "config.b": 5, "config.c": "q"},
                 {"config.a": 3, "config.b": 6, "config.c": "r"}]


@pytest.mark.parametrize("lengths", [(2, 3), (3, 1, 3), (0, 1)])
def test_zipit_of_unequal_lengths_raises(lengths):
  sweeps = [Hyper.sweep(f"config.k{i}", list(range(n))) for i, n in enumerate(lengths)]
  with pytest.raises(ValueError, match="lengths"):
    Hyper.zipit(sweeps)


# ----------------------------------------------------------------------------- load_points


def write_config(tmp_path, body: str) -> str:
  path = tmp_path / "cfg.py"
  path.write_text(textwrap.dedent(body))
  return str(path)


def test_load_points_without_arg(tmp_path):
  path = write_config(tmp_path, """
      def get_hyper(hyper):
        return hyper.product([hyper.sweep("config.seed", [3, 4]),
                              hyper.sweep("config.model_name", ["m2"])])
      """)
  assert sweep.load_points(path) == [{"config.seed": 3, "config.model_name": "m2"},
                                     {"config.seed": 4, "config.model_name": "m2"}]
  # An argument is ignored by a one-parameter get_hyper.
  assert len(sweep.load_points(path + ":whatever")) == 2


@pytest.mark.parametrize("suffix,expected_arg", [(":n=3", "n=3"), (":abc", "abc"),
                                                 ("", None)])
def test_load_points_passes_the_arg(tmp_path, suffix, expected_arg):
  path = write_config(tmp_path, """
      def get_hyper(hyper, arg):
        return [{"config.arg": arg}]
      """)
  assert sweep.load_points(path + suffix) == [{"config.arg": expected_arg}]


def test_load_points_rejects_keys_without_config_prefix(tmp_path):
  path = write_config(tmp_path, """
      def get_hyper(hyper):
        return [{"config.seed": 0}, {"seed": 1, "config.a": 2}]
      """)
  with pytest.raises(ValueError, match="'seed'"):
    sweep.load_points(path)


def test_load_points_without_get_hyper_raises(tmp_path):
  path = write_config(tmp_path, """
      def get_config():
        return None
      """)
  with pytest.raises(ValueError, match="get_hyper"):
    sweep.load_points(path)


# ----------------------------------------------------------------------------- poster sweeps


SCREEN = [("m2", "bound", 0.0), ("untapped", "bound", 1.0), ("untapped", "bound", 0.1),
          ("untapped", "sleep", 0.1), ("untapped", "class_balance", 0.1),
          ("untapped", "batch_posterior", 0.1), ("untapped", "consistency", 0.1)]


def as_tuple(p):
  return (p["config.model_name"], p["config.objective.label_only"],
          p["config.objective.label_only_weight"])


def test_poster_screen_sweep():
  points = sweep.load_points(f"{POSTER}:sweep=screen")
  assert len(points) == 7
  assert [p["config.seed"] for p in points] == [0] * 7
  assert [as_tuple(p) for p in points] == SCREEN


def test_poster_compare_sweep():
  assert len(sweep.load_points(f"{POSTER}:sweep=compare")) == 20  # ten seeds by default
  points = sweep.load_points(f"{POSTER}:sweep=compare,seeds=5")
  assert len(points) == 10
  assert sorted((p["config.seed"], p["config.model_name"]) for p in points) == sorted(
      (s, m) for s in range(5) for m in ("m2", "untapped"))


def test_poster_headline_sweep_has_ten_seeds_per_variant():
  points = sweep.load_points(f"{POSTER}:sweep=headline")
  seeds = {}
  for p in points:
    seeds.setdefault(as_tuple(p), []).append(p["config.seed"])
  assert set(seeds) == {as_tuple(v) for v in poster.HEADLINE_VARIANTS}
  assert set(seeds) <= set(SCREEN) and len(seeds) == 2
  assert all(sorted(s) == list(range(10)) for s in seeds.values())
  # Seed-major order: a sweep cut short still has every variant at its first seeds.
  assert [p["config.seed"] for p in points] == sorted(p["config.seed"] for p in points)


@pytest.mark.parametrize("name", ["compare", "screen", "headline", "headline_cpu", "lambda",
                                  "qx_ladder,prior=runs/prior", "claim", "winner"])
def test_every_poster_point_applies(name):
  base = poster.get_config()
  for point in sweep.load_points(f"{POSTER}:sweep={name}"):
    config = sweep.apply_point(base, point)
    for key, value in point.items():
      target = config
      for part in key.split(".")[1:]:
        target = target[part]
      assert target == value, (key, value)


def test_winner_sweep_is_m2_at_alpha_1_against_class_balance_at_alpha_0_3():
  points = sweep.load_points(f"{POSTER}:sweep=winner,seeds=2")
  assert [(p["config.seed"], p["config.model_name"],
           p["config.objective.classification_weight"]) for p in points] == [
      (0, "m2", 1.0), (0, "untapped", 0.3), (1, "m2", 1.0), (1, "untapped", 0.3)]
  untapped = [p for p in points if p["config.model_name"] == "untapped"]
  assert all(p["config.objective.label_only"] == "class_balance"
             and p["config.objective.label_only_weight"] == 3.0 for p in untapped)
  assert all(p["config.objective.label_only_weight"] == 0.0 for p in points
             if p["config.model_name"] == "m2")


def test_lambda_sweep_is_objective_major_one_population_per_objective():
  points = sweep.load_points(f"{POSTER}:sweep=lambda,seeds=2,objectives=sleep+bound,"
                             "lams=0.1+1+10")
  assert len(points) == 2 * 2 * 3
  assert [p["config.objective.label_only"] for p in points] == ["sleep"] * 6 + ["bound"] * 6
  plan = sweep.plan_populations(poster.get_config("recipe=authors"), points, "/tmp/unused")
  assert [len(members) for members in plan] == [6, 6]  # lambda and seed are population keys


@pytest.mark.parametrize("arg,named", [("objectives=sleep+clas_balance", "clas_balance"),
                                       ("lams=0.1+x", "lams"), ("lams=0+1", "lambda > 0")])
def test_bad_lambda_sweep_is_named(arg, named):
  with pytest.raises(ValueError, match=named):
    sweep.load_points(f"{POSTER}:sweep=lambda,{arg}")


def test_qx_ladder_needs_its_prior_and_climbs_in_order():
  with pytest.raises(ValueError, match="prior=WORKDIR"):
    sweep.load_points(f"{POSTER}:sweep=qx_ladder")
  points = sweep.load_points(f"{POSTER}:sweep=qx_ladder,seeds=1,prior=runs/prior")
  priors = [p.get("config.objective.image_prior") for p in points]
  assert priors == [None, "uniform", "pixel_bernoulli", "pretrained", None]
  assert points[3]["config.objective.image_prior_workdir"] == "runs/prior"
  assert points[4]["config.objective.label_only"] == "class_balance"


def test_bad_sweep_name_is_named():
  with pytest.raises(ValueError, match="'nosuch'"):
    sweep.load_points(f"{POSTER}:sweep=nosuch")


# ----------------------------------------------------------------------------- names, folders


def test_variant_name_leaves_out_the_seed():
  point = {"config.seed": 3, "config.model_name": "untapped",
           "config.objective.label_only_weight": 0.1}
  # Sorted by full key (config.model_name < config.objective.*), named by the leaf.
  assert sweep.variant_name(point) == "model_name=untapped,label_only_weight=0.1"
  assert sweep.variant_name({"config.seed": 5}) == "default"
  assert sweep.point_dir("/r", point) == os.path.join(
      "/r", "model_name=untapped,label_only_weight=0.1", "seed_3")
  assert sweep.point_dir("/r", {"config.model_name": "m2"}) == os.path.join(
      "/r", "model_name=m2", "seed_0")


@pytest.mark.parametrize("seeds", [(0, 1), (2, 7)])
def test_points_differing_in_seed_share_a_variant(seeds):
  a, b = ({"config.model_name": "m2", "config.seed": s} for s in seeds)
  assert sweep.variant_name(a) == sweep.variant_name(b)
  assert os.path.dirname(sweep.point_dir("/r", a)) == os.path.dirname(sweep.point_dir("/r", b))
  assert sweep.point_dir("/r", a) != sweep.point_dir("/r", b)


def test_apply_point_unknown_key_raises_and_leaves_base_alone():
  base = poster.get_config()
  with pytest.raises(KeyError, match="config.train.no_such_key"):
    sweep.apply_point(base, {"config.train.no_such_key": 1})
  applied = sweep.apply_point(base, {"config.train.num_steps": 7})
  assert applied.train.num_steps == 7 and base.train.num_steps == 10000


M2_NAME, U_NAME = "model_name=m2", "model_name=untapped"


# ----------------------------------------------------------------------------- run_points


@pytest.fixture
def fake_train(monkeypatch):
  """Records each population train_population is asked for; writes what a run would."""
  from untapped_jax import train  # pylint: disable=g-import-not-at-top
  calls = []

  def fake(configs, workdirs, *, checkpoint_dir):
    population.check_population(configs)
    calls.append([(c.seed, c.model_name, w) for c, w in zip(configs, workdirs)])
    for c, w in zip(configs, workdirs):
      os.makedirs(w, exist_ok=True)
      files.write_json(os.path.join(w, "config.json"), c.to_dict())
      files.write_json(os.path.join(w, "results.json"), {"num_steps": 1,
                                                          "heldout_accuracy": 0.5})
    assert checkpoint_dir == sweep.population_checkpoint_dir(os.path.dirname(
        os.path.dirname(workdirs[0])), workdirs)

  monkeypatch.setattr(train, "train_population", fake)
  return calls


COMPARE = [{"config.seed": s, "config.model_name": m} for s in range(5)
           for m in ("m2", "untapped")]


def ran_points(calls):
  return sorted((s, m) for population in calls for s, m, _ in population)


def test_points_differing_in_population_keys_train_as_one_population(tmp_path, fake_train):
  sweep.run_points(poster.get_config(), COMPARE, str(tmp_path), shard=0, num_shards=1)
  # model_name changes the code path: one population per model, the seeds vmapped.
  assert [[(s, m) for s, m, _ in p] for p in fake_train] == [
      [(s, "m2") for s in range(5)], [(s, "untapped") for s in range(5)]]
  assert [w for p in fake_train for _, _, w in p] == [
      sweep.point_dir(str(tmp_path), p) for m in ("m2", "untapped")
      for p in COMPARE if p["config.model_name"] == m]


def test_max_population_caps_the_replicas_per_population(tmp_path, fake_train):
  sweep.run_points(poster.get_config(), COMPARE, str(tmp_path), shard=0, num_shards=1,
                   max_population=2)
  # Taken in turn: the m2 and untapped populations of seeds 0-1, then of 2-3, then of 4.
  assert [[(s, m) for s, m, _ in p] for p in fake_train] == [
      [(0, "m2"), (1, "m2")], [(0, "untapped"), (1, "untapped")],
      [(2, "m2"), (3, "m2")], [(2, "untapped"), (3, "untapped")],
      [(4, "m2")], [(4, "untapped")]]
  assert ran_points(fake_train) == sorted((p["config.seed"], p["config.model_name"])
                                          for p in COMPARE)
  with pytest.raises(ValueError, match="max_population=-1"):
    sweep.plan_populations(poster.get_config(), COMPARE, str(tmp_path), max_population=-1)


@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_shards_split_and_cover_the_points(tmp_path, fake_train, num_shards):
  config = poster.get_config()
  root = str(tmp_path)
  for shard in range(num_shards):
    sweep.run_points(config, COMPARE, root, shard=shard, num_shards=num_shards,
                     max_population=2)
  assert ran_points(fake_train) == sorted((p["config.seed"], p["config.model_name"])
                                          for p in COMPARE)
  # Everything finished: a second pass runs nothing.
  before = len(fake_train)
  for shard in range(num_shards):
    sweep.run_points(config, COMPARE, root, shard=shard, num_shards=num_shards)
  assert len(fake_train) == before


def test_run_points_skips_points_finished_with_the_same_config(tmp_path, fake_train):
  root = str(tmp_path)
  config = poster.get_config()
  done = sweep.point_dir(root, COMPARE[3])
  os.makedirs(done)
  files.write_json(os.path.join(done, "config.json"),
                   sweep.apply_point(config, COMPARE[3]).to_dict())
  pathlib.Path(done, "results.json").write_text("{}")
  # Finished, but under another config (steps changed): run again.
  stale = sweep.point_dir(root, COMPARE[5])
  os.makedirs(stale)
  other = sweep.apply_point(config, COMPARE[5])
  other.train.num_steps += 1
  files.write_json(os.path.join(stale, "config.json"), other.to_dict())
  pathlib.Path(stale, "results.json").write_text("{}")
  # A folder without results.json (an interrupted run) is run again.
  os.makedirs(sweep.point_dir(root, COMPARE[4]))
  sweep.run_points(config, COMPARE, root, shard=0, num_shards=1)
  ran = ran_points(fake_train)
  assert len(ran) == 9 and (1, "untapped") not in ran
  assert (2, "m2") in ran and (2, "untapped") in ran


def test_load_results_and_write_tables(tmp_path, fake_train):
  root = str(tmp_path)
  sweep.run_points(poster.get_config(), COMPARE[:4], root, shard=0, num_shards=1)
  results = sweep.load_results(root, COMPARE)
  assert set(results) == {M2_NAME, U_NAME}
  assert sorted(results[M2_NAME]) == [0, 1] and sorted(results[U_NAME]) == [0, 1]
  md = sweep.write_tables(root, COMPARE, reference=M2_NAME)
  assert (tmp_path / "sweep.md").read_text() == md
  rows = list(csv.DictReader(io.StringIO((tmp_path / "sweep.csv").read_text())))
  assert len(rows) == 4


# ----------------------------------------------------------------------------- end to end

SWEEP_CONFIG = '''
from untapped_jax.configs import default, shrink_for_runlocal


def get_config():
  c = shrink_for_runlocal(default.get_config())
  c.data.source = "folder"
  c.data.max_unlabeled = 500
  c.model.hidden = (32,)
  c.model.latent_dim = 4
  c.train.num_steps = 6
  c.train.log_every = 3
  c.train.eval_every = 6
  return c


def get_hyper(hyper):
  return hyper.product([hyper.sweep("config.seed", [0, 1]),
                        hyper.sweep("config.train.learning_rate", [1e-3, 3e-4])])
'''


@pytest.mark.slow
def test_command_line_sweep_trains_one_population_and_skips_it_on_rerun(tmp_path):
  config_path = tmp_path / "tiny_sweep.py"
  config_path.write_text(SWEEP_CONFIG)
  root = tmp_path / "sweep"
  env = dict(os.environ, UNTAPPED_DATA_DIR=DATA_DIR)  # the config reads the folder from it
  cmd = [sys.executable, "-m", "untapped_jax.sweep", f"--config={config_path}",
         f"--workdir={root}", "--reference=learning_rate=0.001", "--metrics=test_accuracy"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Seeds and learning rates differ only in population keys: one population of four.
  assert len(os.listdir(root / "populations")) == 1
  for lr in ("0.001", "0.0003"):
    for seed in (0, 1):
      results = json.loads((root / f"learning_rate={lr}" / f"seed_{seed}" /
                            "results.json").read_text())
      assert results["population_size"] == 4 and results["seed"] == seed
      assert results["num_steps"] == 6
  md = (root / "sweep.md").read_text()
  assert "| learning_rate=0.001 | 2 |" in md and "| learning_rate=0.0003 | 2 |" in md
  rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "4 of 4 points already finished" in rerun.stderr
  # --eval_only evaluates every population again from its checkpoint and trains nothing:
  # a key lost from results.json comes back, and every file ends as the same bytes.
  first = root / "learning_rate=0.001" / "seed_0" / "results.json"
  before = {p: p.read_bytes() for p in root.glob("*/seed_*/results.json")}
  metrics_before = {p: p.read_bytes() for p in root.glob("*/seed_*/metrics.jsonl")}
  damaged = json.loads(first.read_text())
  del damaged["test_accuracy"]
  first.write_text(json.dumps(damaged))
  again = subprocess.run(cmd + ["--eval_only"], capture_output=True, text=True, timeout=600, env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "evaluating" in again.stderr and "again" in again.stderr
  assert {p: p.read_bytes() for p in root.glob("*/seed_*/results.json")} == before
  assert {p: p.read_bytes() for p in root.glob("*/seed_*/metrics.jsonl")} == metrics_before
