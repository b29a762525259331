"""Experiment configs, their ':arg' parsing, and the command line on real MNIST."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from untapped_jax import configs
from untapped_jax import objective
from untapped_jax import sweep
from untapped_jax.configs import default

from real_mnist import DATA_DIR
from repo_files import CONFIG_DIR
from repo_files import REPO
from repo_files import load_module



def load(name: str):
  return load_module(CONFIG_DIR / f"{name}.py", f"{name}_config")


m2_benchmark = load("m2_benchmark")
poster = load("poster")


# ----------------------------------------------------------------------------- parse_arg


def test_parse_arg_types_values_by_their_defaults():
  args = configs.parse_arg("a=3,b,c=hello,d=-2.5,e=False,g=x=y,h=7", a=1, b=False, c="x",
                           d=0.0, e=True, f=0.5, g="", h=0.0)
  assert args.to_dict() == {"a": 3, "b": True, "c": "hello", "d": -2.5, "e": False,
                            "f": 0.5, "g": "x=y", "h": 7.0}
  assert type(args.a) is int and type(args.h) is float and args.c == "hello"
  assert configs.parse_arg("c=12", c="x").c == "12"  # a str default keeps digits as text
  assert configs.parse_arg(None, a=1).to_dict() == {"a": 1}
  assert configs.parse_arg("", a=1).to_dict() == {"a": 1}


@pytest.mark.parametrize("arg,defaults,match", [
    ("a=2.5", {"a": 1}, r"a=2.5: expected an int like the default 1"),
    ("a=x", {"a": 0.5}, r"a=x: expected a float"),
    ("b=maybe", {"b": False}, r"b=maybe: expected a bool"),
    ("a", {"a": 1}, r"'a' needs a value"),
])
def test_parse_arg_wrong_types_name_the_key(arg, defaults, match):
  with pytest.raises(ValueError, match=match):
    configs.parse_arg(arg, **defaults)


def test_parse_arg_unknown_key_names_it():
  with pytest.raises(ValueError, match="'lables'") as e:
    configs.parse_arg("lables=100", labels=100, runlocal=False)
  assert "labels" in str(e.value) and "runlocal" in str(e.value)  # the accepted keys


# ----------------------------------------------------------------------------- m2_benchmark


@pytest.mark.parametrize("labels,per_class", [(100, 10), (600, 60), (1000, 100), (3000, 300)])
def test_m2_benchmark_labels(labels, per_class):
  c = m2_benchmark.get_config(f"labels={labels}")
  assert c.data.labeled_per_class == per_class
  assert isinstance(c.data.labeled_per_class, int)
  assert tuple(c.data.labeled_classes) == tuple(range(10))
  assert c.model_name == "m2"
  assert c.objective.classification_weight == 1.0
  assert c.train.learning_rate == 1e-3
  assert c.train.num_steps == default.get_config().train.num_steps  # not runlocal


def test_m2_benchmark_default_and_runlocal():
  assert m2_benchmark.get_config().data.labeled_per_class == 10
  assert m2_benchmark.get_config(None).data.labeled_per_class == 10
  c = m2_benchmark.get_config("labels=3000,runlocal")
  assert c.data.labeled_per_class == 300
  assert c.train.num_steps == 20 and c.train.checkpoint_every == 0
  assert c.data.max_unlabeled == 2000 and not c.train.progress_bar


@pytest.mark.parametrize("labels,batches,per_labeled_weight", [(100, 100, 50.0),
                                                                 (3000, 200, 5 / 3)])
def test_m2_benchmark_jonemeth_recipe(labels, batches, per_labeled_weight):
  # Against jonemeth's logged hparams (ssl-vae/logs/sslvae_1layer_mnist_*): num_batches,
  # classification_weight per labeled example, 3000 epochs, Adam 3e-4 with L2 1/50,000;
  # ssl-vae/models/mlp.py keeps torch.nn.Linear's own initialisation.
  c = m2_benchmark.get_config(f"labels={labels},recipe=jonemeth")
  labeled, unlabeled = labels, 50000 - labels
  assert (c.data.labeled_batch_size + c.data.unlabeled_batch_size) * batches == 50000
  assert c.data.labeled_batch_size * batches == labeled
  assert c.data.unlabeled_batch_size * batches == unlabeled
  weights = objective.StreamWeights.from_sizes(
      num_labeled=labeled, num_unlabeled=unlabeled, num_label_only=0,
      classification_weight=c.objective.classification_weight, label_only_weight=0.0)
  assert weights.classification == pytest.approx(per_labeled_weight)
  assert c.train.num_steps == 3000 * batches
  assert c.train.learning_rate == 3e-4 and c.train.weight_decay == pytest.approx(2e-5)
  assert c.data.binarization == "none" and c.train.select_by == "final"
  assert c.model.kernel_init == "torch_linear"


@pytest.mark.parametrize("config,arg,named", [
    (m2_benchmark, "recipe=kingma", "recipe='kingma'"),
    (m2_benchmark, "labels=250", "labels=250;"),
    (m2_benchmark, "labels=abc", "labels=abc: expected an int"),
    (m2_benchmark, "labels=0", "labels=0;"),
    (poster, "model=m3", "model='m3'"),
    (poster, "model=M2", "model='M2'")])
def test_bad_config_argument_is_named(config, arg, named):
  with pytest.raises(ValueError, match=arg.split("=")[0]) as e:
    config.get_config(arg)
  assert named in str(e.value)


def test_m2_benchmark_unknown_key():
  with pytest.raises(ValueError, match="'model'"):
    m2_benchmark.get_config("model=m2")


# ----------------------------------------------------------------------------- poster


@pytest.mark.parametrize("model", ["m2", "untapped"])
def test_poster_model(model):
  c = poster.get_config(f"model={model}")
  assert c.model_name == model
  assert tuple(c.data.labeled_classes) == (0, 1, 2, 3, 4)
  assert tuple(c.data.unlabeled_classes) == tuple(range(10))
  assert tuple(c.data.label_only_classes) == tuple(range(10))
  assert c.data.labeled_per_class == 100
  assert c.eval.semantic is True
  assert c.train.num_steps == 10000


def test_poster_defaults_and_per_class():
  c = poster.get_config()
  assert c.model_name == "untapped"
  assert poster.get_config("per_class=7,model=m2").data.labeled_per_class == 7
  local = poster.get_config("model=m2,runlocal")
  assert local.model_name == "m2" and local.train.num_steps == 20
  assert local.eval.samples_per_class == 20


def test_poster_unknown_key():
  with pytest.raises(ValueError, match="'labels'"):
    poster.get_config("labels=100")


def test_configs_are_config_dicts_with_default_keys():
  base = default.get_config()
  for c in (m2_benchmark.get_config(), poster.get_config()):
    assert isinstance(c, ml_collections.ConfigDict)
    assert set(c.keys()) == set(base.keys())
    for section in ("data", "model", "objective", "train", "eval"):
      assert set(c[section].keys()) == set(base[section].keys()), section


def test_m2_benchmark_sweep():
  # poster.py's sweeps are tested in sweep_test.py.
  points = sweep.load_points(str(CONFIG_DIR / "m2_benchmark.py"))
  assert [p["config.data.labeled_per_class"] for p in points] == [10, 60, 100, 300]
  # Every point applies to the benchmark's config (apply_point rejects unknown keys).
  base = m2_benchmark.get_config()
  assert [sweep.apply_point(base, p).data.labeled_per_class for p in points] == [
      10, 60, 100, 300]


# ----------------------------------------------------------------------------- command line


@pytest.fixture
def cli_env(tmp_path, session_caches):
  # The session's compilation cache (conftest.py) comes with os.environ, so the
  # subprocess reuses the compiled evaluation and initialisation functions.
  del session_caches
  return dict(os.environ, UNTAPPED_DATA_DIR=DATA_DIR,
              UNTAPPED_CACHE_DIR=str(tmp_path / "evaluator_cache"))


@pytest.mark.slow
def test_command_line_trains_and_writes_results(tmp_path, cli_env):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "untapped_jax",
         "--config", "experiments/configs/m2_benchmark.py:labels=100,runlocal",
         "--workdir", str(workdir), "--config.train.num_steps=5",
         "--config.train.log_every=5", "--config.train.eval_every=5",
         "--config.data.max_unlabeled=500"]
  proc = subprocess.run(cmd, cwd=REPO, env=cli_env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert 0.0 <= results["test_accuracy"] <= 1.0
  assert results["num_steps"] == 5
  assert results["split_sizes"]["labeled"] == 100
  assert results["split_sizes"]["unlabeled"] == 500
  assert results["split_sizes"]["test"] == 10000
  assert "confusion" not in results  # m2_benchmark does not run the semantic evaluation
  config = json.loads((workdir / "config.json").read_text())
  assert config["train"]["num_steps"] == 5 and config["data"]["labeled_per_class"] == 10
  assert config["data"]["max_unlabeled"] == 500
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines] == [5]
  assert "validation/accuracy" in lines[0]
  assert not (tmp_path / "evaluator_cache").exists()


@pytest.mark.slow
def test_command_line_rejects_unknown_config_key(tmp_path, cli_env):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "untapped_jax",
         "--config", "experiments/configs/m2_benchmark.py:labels=100,runlocal",
         "--workdir", str(workdir), "--config.no_such_key=1"]
  proc = subprocess.run(cmd, cwd=REPO, env=cli_env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0
  assert "no_such_key" in proc.stdout + proc.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_command_line_rejects_bad_config_arg(tmp_path, cli_env):
  cmd = [sys.executable, "-m", "untapped_jax",
         "--config", "experiments/configs/m2_benchmark.py:labels=123",
         "--workdir", str(tmp_path / "run")]
  proc = subprocess.run(cmd, cwd=REPO, env=cli_env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0
  assert "labels=123" in proc.stdout + proc.stderr
  assert not (tmp_path / "run").exists()
