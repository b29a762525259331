"""Populations: replicas vmapped in one jitted step equal separate runs (real MNIST).

A population stopped and resumed ends in the bytes of one never stopped: kill_test (a
sweep's population of two seeds, SIGKILLed and relaunched) and resume_faults_test."""

import json
import os

import jax
import numpy as np
import pytest

from untapped_jax import launch
from untapped_jax import objective
from untapped_jax import population as population_lib
from untapped_jax import run_dir
from untapped_jax import sweep
from untapped_jax import train
from untapped_jax import train_state
from untapped_jax.configs import default
from untapped_jax.data import mnist

from real_mnist import DATA_DIR



def trains_on_mnist(test):
  """Trains on MNIST (real_mnist.DATA_DIR): seconds to minutes on two cores, so slow."""
  return pytest.mark.slow(test)


def tiny_config(**overrides):
  c = default.get_config()
  c.data.dir = DATA_DIR
  c.data.source = "folder"
  c.data.num_validation = 1000
  c.data.max_unlabeled = 2000
  c.data.max_label_only = 2000
  c.data.labeled_batch_size = 20
  c.data.unlabeled_batch_size = 20
  c.data.label_only_batch_size = 20
  c.model.hidden = (64,)
  c.model.latent_dim = 8
  c.train.num_steps = 20
  c.train.log_every = 10
  c.train.eval_every = 20
  c.train.checkpoint_every = 0
  c.train.progress_bar = False
  c.train.eval_batch_size = 2000
  return sweep.apply_point(c, {f"config.{k}": v for k, v in overrides.items()})


def train_one(config, workdir):
  return train.train_population([config], [str(workdir)],
                                checkpoint_dir=str(workdir / "checkpoints"))


def assert_replica_matches(population, i, single):
  """Replica i of a population against a population of one: same numbers to float
  tolerance (vmapping reorders reductions) after 20 Adam steps. Adam divides by the
  root of the second moment, so a parameter whose gradients are near zero can move by
  a few 1e-5 on a reordering alone: atol 5e-5 against steps of lr = 1e-3."""
  a = jax.tree.leaves(jax.device_get(train_state.unstack(population.state.params, i)))
  b = jax.tree.leaves(jax.device_get(train_state.unstack(single.state.params, 0)))
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=5e-5)
  ra, rb = population.results[i], single.results[0]
  assert ra["seed"] == rb["seed"]
  assert ra["test_accuracy"] == pytest.approx(rb["test_accuracy"], abs=2e-3)
  assert ra["test_unlabeled_bound"] == pytest.approx(rb["test_unlabeled_bound"], rel=1e-4)
  assert ra["split_sizes"] == rb["split_sizes"]


@trains_on_mnist
@pytest.mark.parametrize("model_name,overrides", [
    ("m2", [{"seed": 0, "train.learning_rate": 1e-3, "objective.classification_weight": 1.0},
            {"seed": 1, "train.learning_rate": 3e-4, "objective.classification_weight": 0.1}]),
    ("untapped", [{"seed": 3, "objective.label_only_weight": 1.0,
                   "objective.label_smoothing": 1.0},
                  {"seed": 3, "objective.label_only_weight": 0.3,
                   "objective.label_smoothing": 0.9}]),
])
def test_population_replicas_equal_separate_runs(tmp_path, model_name, overrides):
  configs = [tiny_config(model_name=model_name, **o) for o in overrides]
  population = train.train_population(
      configs, [str(tmp_path / f"r{i}") for i in range(len(configs))],
      checkpoint_dir=str(tmp_path / "population_checkpoints"))
  # The replicas really differ: different hyperparameters give different parameters.
  p0, p1 = (jax.tree.leaves(train_state.unstack(population.state.params, i))[0] for i in (0, 1))
  assert not np.allclose(p0, p1)
  for i, config in enumerate(configs):
    single = train_one(config, tmp_path / f"single{i}")
    assert_replica_matches(population, i, single)
    on_disk = json.loads((tmp_path / f"r{i}" / "results.json").read_text())
    assert on_disk["population_size"] == 2 and on_disk["seed"] == config.seed
    assert json.loads((tmp_path / f"r{i}" / "config.json").read_text())["seed"] == config.seed


def stepped(configs, *, per_pass, images, batches):
  """The parameters of `configs` as one population after len(batches) steps of the
  train step, its replicas' gradients computed `per_pass` at a time."""
  configs = [sweep.apply_point(c, {"config.train.replicas_per_pass": per_pass})
             for c in configs]
  created = [train_state.create_train_state(c, seed=c.seed) for c in configs]
  graphdef, tx = created[0][:2]
  state = train_state.stack([s for _, _, s in created])
  numbers = train_state.stack([objective.loss_numbers(
      c, num_labeled=100, num_unlabeled=2000, num_label_only=2000,
      pixel_probs=np.full(784, 0.2, np.float32)) for c in configs])
  step = train.make_train_step(configs[0], graphdef, tx)
  for batch in batches:
    state, _ = step(state, batch, numbers, images)
  return jax.device_get(state.params)


@pytest.mark.slow
def test_replicas_per_pass_steps_each_replica_as_a_lone_run(monkeypatch):
  """Three replicas (seeds, learning rates, classification weights) stepped two at a time
  (a scan over a vmapped pass of two, then the remainder of one), and one at a time both
  written out in the step (the CPU's default) and scanned (past
  MAX_REPLICAS_WRITTEN_OUT), each end where the replica stepped alone ends, on MNIST
  images. (All at once, one vmap: the sharding test's two devices and benchmark_test's
  paired populations.)"""
  overrides = [{"seed": 0}, {"seed": 1, "train.learning_rate": 3e-3},
               {"seed": 2, "objective.classification_weight": 1.0}]
  configs = [tiny_config(**o) for o in overrides]
  images = mnist.load(configs[0].data)["train_images"][:2000].reshape(2000, -1)
  rng = np.random.default_rng(0)
  d = configs[0].data

  def batch(replicas):
    rows = lambda n: rng.integers(0, len(images), (replicas, n)).astype(np.int32)
    labels = lambda n: np.eye(10, dtype=np.float32)[rng.integers(0, 10, (replicas, n))]
    return {"labeled": {"index": rows(d.labeled_batch_size), "y": labels(d.labeled_batch_size)},
            "unlabeled": {"index": rows(d.unlabeled_batch_size)},
            "label_only": {"y": labels(d.label_only_batch_size)}}

  batches = [batch(3) for _ in range(3)]
  alone = [stepped([c], per_pass=0, images=images,
                   batches=[jax.tree.map(lambda a, i=i: a[i:i + 1], b) for b in batches])
           for i, c in enumerate(configs)]
  in_pairs = stepped(configs, per_pass=2, images=images, batches=batches)
  written_out = stepped(configs, per_pass=1, images=images, batches=batches)
  monkeypatch.setattr(train, "MAX_REPLICAS_WRITTEN_OUT", 2)
  scanned = stepped(configs, per_pass=1, images=images, batches=batches)
  for together in (in_pairs, written_out, scanned):
    for i, lone in enumerate(alone):
      for x, y in zip(jax.tree.leaves(train_state.unstack(together, i)),
                      jax.tree.leaves(lone)):
        np.testing.assert_allclose(x, y[0], rtol=1e-4, atol=2e-5)
  with pytest.raises(ValueError, match=r"train\.replicas_per_pass=-1; expected 0"):
    population_lib.replicas_per_pass(-1)


def test_check_population_names_the_keys_that_differ():
  base = tiny_config()
  population_lib.check_population([base, tiny_config(seed=5, **{"train.learning_rate": 0.01})])
  with pytest.raises(ValueError, match=r"model\.latent_dim"):
    population_lib.check_population([base, tiny_config(**{"model.latent_dim": 4})])
  with pytest.raises(ValueError, match=r"label_only_weight"):  # switches the term off
    population_lib.check_population([tiny_config(model_name="untapped"),
                            tiny_config(model_name="untapped",
                                        **{"objective.label_only_weight": 0.0})])
  with pytest.raises(ValueError, match="at least one"):
    population_lib.check_population([])


@trains_on_mnist
def test_num_seeds_trains_each_seed_once_and_summarises(tmp_path):
  config = tiny_config(num_seeds=2, seed=4)
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["seeds"] == [4, 5]
  per_seed = [json.loads((tmp_path / f"seed_{s}" / "results.json").read_text())
              for s in (4, 5)]
  accuracies = [r["test_accuracy"] for r in per_seed]
  assert summary["mean"]["test_accuracy"] == pytest.approx(np.mean(accuracies))
  assert per_seed[0]["test_accuracy"] != per_seed[1]["test_accuracy"]
  assert "test_accuracy" in (tmp_path / "summary.md").read_text()
  # Seed 5 of the population equals seed 5 trained alone.
  single = train_one(tiny_config(seed=5), tmp_path / "alone")
  assert single.results[0]["test_accuracy"] == pytest.approx(accuracies[1], abs=2e-3)
  # A rerun finds every seed finished and trains nothing.
  mtime = os.path.getmtime(tmp_path / "seed_4" / "results.json")
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again["mean"] == summary["mean"]
  assert os.path.getmtime(tmp_path / "seed_4" / "results.json") == mtime


@pytest.mark.parametrize("env,expected", [
    ({}, False), ({"SLURM_NTASKS": "1"}, False), ({"TPU_WORKER_HOSTNAMES": "w0"}, False),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True), ({"SLURM_NTASKS": "4"}, True),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, True), ({"OMPI_COMM_WORLD_SIZE": "2"}, True)])
def test_multi_host_launch_is_read_from_the_launchers_variables(env, expected):
  assert launch.multi_host_launch(env) is expected


@trains_on_mnist
def test_non_finite_loss_stops_naming_step_and_term_and_keeps_the_checkpoint(tmp_path):
  # Adam at a learning rate of 1e12 moves every weight by about 1e12 in one step.
  bad = tiny_config(**{"train.checkpoint_every": 1, "train.log_every": 1,
                       "train.learning_rate": 1e12})
  with pytest.raises(FloatingPointError,
                     match=r"step (\d+): train/\w+ = (nan|-?inf) \(seed 0, .*\).* last "
                           r"checkpoint \(step (\d+)\) is kept") as error:
    train_one(bad, tmp_path / "run")
  failed = int(str(error.value).split(":")[0].split()[1])
  kept = [int(d) for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit()]
  assert kept and max(kept) == failed - 1  # the last good state, nothing after it
  assert not (tmp_path / "run" / "results.json").exists()
  assert not run_dir.is_finished(bad, str(tmp_path / "run"))


@trains_on_mnist
def test_a_workdir_of_another_config_is_refused_naming_the_keys(tmp_path):
  train_one(tiny_config(), tmp_path / "run")
  results = (tmp_path / "run" / "results.json").read_text()
  with pytest.raises(ValueError, match=r"another config: \['model.latent_dim', "
                                       r"'train.learning_rate'\]"):
    train_one(tiny_config(**{"model.latent_dim": 4, "train.learning_rate": 0.01}),
              tmp_path / "run")
  assert (tmp_path / "run" / "results.json").read_text() == results  # untouched


@trains_on_mnist
def test_eval_only_reevaluates_the_final_checkpoint_identically(tmp_path):
  config = tiny_config()  # checkpoint_every=0: the final state is still checkpointed
  first = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert os.listdir(tmp_path / "run" / "checkpoints") == ["20"]
  lines = (tmp_path / "run" / "metrics.jsonl").read_text()
  again = train.train_and_evaluate(config, str(tmp_path / "run"), eval_only=True)
  assert again == first
  assert (tmp_path / "run" / "metrics.jsonl").read_text() == lines
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"):
    train.train_and_evaluate(config, str(tmp_path / "empty"), eval_only=True)


def test_launch_by_hand_passes_process_count_and_id():
  env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
         "JAX_PROCESS_ID": "1"}
  assert launch.distributed_arguments(env) == {
      "coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
  assert launch.distributed_arguments({"SLURM_NTASKS": "4"}) == {}  # jax finds SLURM's itself


@pytest.mark.parametrize("count,pid,named", [("", "0", "JAX_NUM_PROCESSES"),
                                             ("2", "x", "JAX_PROCESS_ID"),
                                             ("2", "2", "JAX_PROCESS_ID=2")])
def test_bad_launch_by_hand_names_the_variable(count, pid, named):
  env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": count,
         "JAX_PROCESS_ID": pid}
  with pytest.raises(ValueError, match=named):
    launch.distributed_arguments(env)
