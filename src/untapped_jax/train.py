"""Population training: S replicas (seeds, hyperparameters) in one jitted, vmapped step.

The train state is one pytree (TrainState) whose leaves carry a leading replica
axis [S, ...]. Replicas may differ in the seed (initialisation, data split, data
order, noise) and in the hyperparameters of POPULATION_KEYS, which enter the step
as arrays; everything else (shapes, code paths) is shared. A single run is a
population of one, so it goes through the same code.

The streams' positions are the step itself (see data/streams.py), so the step is
a pure function of (state, batch) and a restored checkpoint resumes exactly.
MNIST's training images live on the device; each step receives only row indices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Sequence

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from untapped_jax import saved_state
from untapped_jax import files
from untapped_jax import launch
from untapped_jax import metric_writer
from untapped_jax import models
from untapped_jax import objective
from untapped_jax import rng as rng_lib
from untapped_jax import stats
from untapped_jax import train_state as train_state_lib
from untapped_jax import workdir_lock
from untapped_jax.train_state import TrainState
from untapped_jax.data import mnist
from untapped_jax.data import splits as splits_lib
from untapped_jax.data import streams as streams_lib
from untapped_jax.evaluate import heldout
from untapped_jax.evaluate import semantic
from untapped_jax.evaluate import suite

# Config keys whose values may differ between the replicas of one population: they
# change neither shapes nor code paths, so they enter the jitted step as arrays.
POPULATION_KEYS = ("seed", "num_seeds", "train.learning_rate",
                   "objective.classification_weight", "objective.labeled_weight",
                   "objective.unlabeled_weight", "objective.label_only_weight",
                   "objective.label_smoothing", "objective.classification_temperature",
                   "objective.relaxed_temperature")


def binarize_batch(batch, rng, *, mode: str):
  """Turns every uint8 'x' of the nested batch into floats, a fresh key per stream."""
  out = {}
  for i, (name, arrays) in enumerate(sorted(batch.items())):
    out[name] = {k: streams_lib.binarize(v, jax.random.fold_in(rng, i), mode=mode)
                 if k == "x" else v for k, v in arrays.items()}
  return out


def make_train_step(config, graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
  """train_step(state, batch, numbers, images) -> (state, metrics), jitted.

  state, batch and `numbers` (objective.loss_numbers of each replica) carry a leading
  replica axis [S]; the batch holds row indices into `images` (uint8 [N, D], shared by all
  replicas, kept on the device). The step is vmapped over replicas and donates
  its input state, whose buffers it overwrites.
  """

  def replica_step(state: TrainState, batch, numbers, images):
    loss_fn = objective.loss_fn_from_numbers(config, graphdef, numbers)
    rng, bin_rng, loss_rng = jax.random.split(state.rng, 3)
    batch = binarize_batch(streams_lib.gather_images(batch, images), bin_rng,
                           mode=config.data.binarization)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, loss_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         rng=rng), metrics

  return jax.jit(jax.vmap(replica_step, in_axes=(0, 0, 0, None)), donate_argnums=0)


SELECT_BY = ("validation_accuracy", "final")
POSITIVE_INTS = ("num_seeds", "data.labeled_batch_size", "data.unlabeled_batch_size",
                 "data.label_only_batch_size", "train.num_steps", "train.log_every",
                 "train.eval_every", "train.eval_batch_size", "objective.num_samples",
                 "objective.label_only_num_samples", "model.latent_dim")


def validate(config) -> None:
  """Every check of `config` that needs no data, run at start-up before MNIST is loaded:
  each failure is a ValueError naming the key, the value and what is accepted."""
  flat = _flatten(config.to_dict())
  for key in POSITIVE_INTS:
    value = flat[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{key}={value!r}; expected a positive integer.")
  if config.train.select_by not in SELECT_BY:
    raise ValueError(f"train.select_by={config.train.select_by!r}; expected one of {SELECT_BY}.")
  if config.data.binarization not in streams_lib.BINARIZATIONS:
    raise ValueError(f"data.binarization={config.data.binarization!r}; expected one of "
                     f"{streams_lib.BINARIZATIONS}.")
  splits_lib.check_config(config.data)
  models.activation_fn(config.model.activation)
  models.kernel_initializer(config.model.kernel_init, config.model.init_stddev)
  if not config.model.hidden or any(h < 1 for h in config.model.hidden):
    raise ValueError(f"model.hidden={tuple(config.model.hidden)}; expected positive widths, "
                     "at least one.")
  every, log_every = config.train.checkpoint_every, config.train.log_every
  if isinstance(every, bool) or not isinstance(every, int) or every < 0 or every % log_every:
    raise ValueError(f"train.checkpoint_every={every!r}; expected 0 (only the final state) or "
                     f"a multiple of train.log_every={log_every}, so that a resumed run "
                     "restarts at a logged step and logs the same numbers.")
  train_state_lib.make_optimizer(config.train)
  objective.loss_numbers(config, num_labeled=1, num_unlabeled=1, num_label_only=1,
                         pixel_probs=np.full(config.model.num_pixels, 0.5, np.float32))


# Keys a rerun in the same workdir may change: how long and how visibly it trains, how it
# is evaluated, and where its data and caches are. Anything else is another experiment.
CONTINUATION_KEYS = ("train.num_steps", "train.time_limit_s", "train.progress_bar",
                     "train.checkpoint_every", "train.log_every", "train.eval_every",
                     "train.eval_batch_size", "train.tensorboard", "data.dir", "data.source",
                     "data.tfds_data_dir")


def check_same_experiment(config, workdir: str) -> None:
  """Refuses a workdir whose config.json is another experiment's (naming the keys),
  so two configs never mix in one metrics.jsonl or checkpoint."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = _flatten(json.load(f))
  new = _flatten(json.loads(json.dumps(config.to_dict())))
  differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                  and k not in CONTINUATION_KEYS and not k.startswith("eval."))
  if differ:
    raise ValueError(
        f"workdir {workdir!r} holds a run of another config: {differ} differ "
        f"({', '.join(f'{k}: {old.get(k)!r} there, {new.get(k)!r} here' for k in differ[:4])}). "
        f"Use another workdir; a rerun may change only {CONTINUATION_KEYS} and eval.*.")


def check_workdir(workdir: str) -> None:
  """Creates `workdir` and checks that a file can be written in it."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".writable"):
      pass  # every process of a launch checks, though only process 0 writes
  except OSError as e:
    raise ValueError(f"workdir {workdir!r} is not writable ({e}); expected a folder this "
                     "process can create files in.") from e


# ----------------------------------------------------------------------------- populations


def _flatten(config_dict: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in config_dict.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def population_signature(config) -> str:
  """Equal for configs that can share one population: all keys outside POPULATION_KEYS,
  plus the code paths some of those keys switch (a zero label-only weight skips the
  term; a zero classification temperature scores q(y|x) itself)."""
  flat = {k: v for k, v in _flatten(config.to_dict()).items() if k not in POPULATION_KEYS}
  flat["_label_only_on"] = objective.uses_label_only(config)
  flat["_concrete_classification"] = config.objective.classification_temperature > 0
  return json.dumps(flat, sort_keys=True, default=str)


def check_population(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises unless `configs` differ only in POPULATION_KEYS (naming the keys that differ)."""
  if not configs:
    raise ValueError("a population needs at least one config.")
  first = configs[0]
  for other in configs[1:]:
    if population_signature(other) != population_signature(first):
      a, b = _flatten(first.to_dict()), _flatten(other.to_dict())
      keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
      raise ValueError(
          f"configs differ in {keys}; one population may differ only in {POPULATION_KEYS} "
          "(and not switch the label-only term or the Concrete classification on and off).")


@dataclasses.dataclass
class Replica:
  """One member of a population: its config, folder, data splits and streams."""
  config: ml_collections.ConfigDict
  workdir: str
  splits: splits_lib.Splits
  streams: dict[str, streams_lib.CyclingStream]
  writer: metric_writer.MetricWriter | None = None


@dataclasses.dataclass
class Population:
  """What train_population leaves behind besides the results.json files."""
  results: list[dict[str, Any]]
  graphdef: nnx.GraphDef
  state: TrainState  # stacked over replicas
  best_params: nnx.State  # stacked over replicas
  replicas: list[Replica]


def _population_batch(replicas: Sequence[Replica], step: int):
  return train_state_lib.stack([streams_lib.batch_at(r.streams, step) for r in replicas], xp=np)


def fetch(tree):
  """jax.device_get that also reads arrays spread over several processes' devices (a
  multi-host population split by replica): every process gets the whole value."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a population's arrays live on the local devices (one mesh axis 'devices').

  With S replicas on n > 1 devices: if n divides S, each device holds S / n
  replicas (state, loss numbers and batches split on the replica axis); otherwise
  the replicas are copied to every device and each batch is split on its example
  axis (data parallel; a stream whose batch n does not divide stays whole). The
  images are copied to every device. One device: nothing is split.
  """
  mesh: jax.sharding.Mesh | None
  by_replica: bool

  @classmethod
  def for_population(cls, num_replicas: int) -> "Placement":
    devices = jax.devices()
    if len(devices) == 1:
      return cls(mesh=None, by_replica=False)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("devices",))
    return cls(mesh=mesh, by_replica=num_replicas % len(devices) == 0)

  def _put(self, tree, spec_of):
    if self.mesh is None:
      return jax.device_put(tree)

    def put(a):
      if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # typed keys: their data
        return jax.random.wrap_key_data(put(jax.random.key_data(a)),
                                        impl=jax.random.key_impl(a))
      # Every process holds the whole host array (each computes the same batches) and
      # hands over the shards of its own devices: the multi-process way to build a
      # global array, and the same as device_put on one process.
      a = np.asarray(a)
      sharding = jax.sharding.NamedSharding(self.mesh, spec_of(a))
      return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])
    return jax.tree.map(put, tree)

  def replicated(self, tree):
    return self._put(tree, lambda a: jax.sharding.PartitionSpec())

  def per_replica(self, tree):
    """State and loss numbers: leading replica axis."""
    P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
    return self._put(tree, lambda a: P("devices") if self.by_replica else P())

  def batch(self, tree):
    """[S, B, ...] batches: split on S, or on B where the devices divide it."""
    P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
    n = 1 if self.mesh is None else self.mesh.size
    return self._put(tree, lambda a: P("devices") if self.by_replica else (
        P(None, "devices") if a.shape[1] % n == 0 else P()))


def is_finished(config, workdir: str) -> bool:
  """True when `workdir` holds results.json of a run of exactly `config`."""
  paths = [os.path.join(workdir, n) for n in ("results.json", "config.json")]
  if not all(os.path.exists(p) for p in paths):
    return False
  with open(paths[1]) as f:
    return json.load(f) == json.loads(json.dumps(config.to_dict()))


def train_population(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                     *, checkpoint_dir: str, eval_only: bool = False) -> Population:
  """Trains the replicas `configs` (see check_population) as one vmapped population.

  Replica i writes config.json, metrics.jsonl, results.json (and the semantic
  evaluation's files) to workdirs[i]; the population's checkpoints, which hold all
  replicas, go to `checkpoint_dir`. Rerunning resumes from the latest checkpoint.
  With `eval_only`, nothing trains: the latest checkpoint is evaluated again and
  results.json rewritten. Wall-clock times go to timings.jsonl and timing.json only,
  so metrics.jsonl and results.json are the same bytes however often the run was
  killed and resumed.
  """
  check_population(configs)
  if len(set(map(os.path.abspath, workdirs))) != len(configs):
    raise ValueError(f"workdirs={list(workdirs)}: expected {len(configs)} distinct folders.")
  config = configs[0]
  for c in configs:
    validate(c)
  for c, workdir in zip(configs, workdirs):
    check_same_experiment(c, workdir)
    check_workdir(workdir)
  data = mnist.load(config.data)
  replicas = []
  for c, workdir in zip(configs, workdirs):
    splits = splits_lib.make_splits(data, c.data, seed=c.seed)
    replicas.append(Replica(c, workdir, splits, streams_lib.make_streams(splits, c, seed=c.seed)))
  for r in replicas:
    stale = os.path.join(r.workdir, "results.json")
    if not eval_only and os.path.exists(stale) and files.is_writer():
      os.remove(stale)  # another config's results, about to be replaced
  placement = Placement.for_population(len(replicas))
  numbers = placement.per_replica(train_state_lib.stack(
      [objective.numbers_for_splits(r.config, r.splits) for r in replicas]))
  created = [train_state_lib.create_train_state(c, seed=c.seed) for c in configs]
  graphdef, tx = created[0][:2]
  state = placement.per_replica(train_state_lib.stack([s for _, _, s in created]))
  train_step = make_train_step(config, graphdef, tx)
  images = placement.replicated(data["train_images"])

  def evaluate_on(r: Replica, params, split):
    return heldout.evaluate(graphdef, params, split, batch_size=config.train.eval_batch_size,
                            binarization=config.data.binarization, seed=r.config.seed)

  best = saved_state.initial_best(state, len(replicas))
  manager = saved_state.manager(checkpoint_dir)
  if manager.latest_step() is not None:
    state, best = saved_state.restore(manager, state, best)
  if eval_only:
    return _evaluate_checkpoint(replicas, manager, state, best, graphdef=graphdef, data=data,
                                evaluate_on=evaluate_on)
  for r in replicas:
    r.writer = metric_writer.MetricWriter(r.workdir, config=r.config.to_dict(),
                                          resume_step=manager.latest_step() or 0,
                                          tensorboard=config.train.tensorboard)
  validators = [_validator(r.config, graphdef, r.splits, data,
                           lambda p, split, r=r: evaluate_on(r, p, split)) for r in replicas]
  try:
    state, best, num_steps, train_wall_s = _train_loop(
        config, replicas, state, best, train_step=train_step, numbers=numbers, images=images,
        manager=manager, validators=validators, placement=placement, graphdef=graphdef)
  finally:  # whatever stopped training: commit the checkpoints already begun, flush logs
    manager.wait_until_finished()
    for r in replicas:
      r.writer.close()
  if files.is_writer():
    for r in replicas:
      files.write_json(os.path.join(r.workdir, metric_writer.TIMING_FILE),
                       {"train_wall_s": r.writer.wall_s_before + train_wall_s,
                        "num_steps": num_steps, "population_size": len(replicas)})
  return _final_evaluation(replicas, state, best, graphdef=graphdef, data=data,
                           num_steps=num_steps, evaluate_on=evaluate_on)


def _final_evaluation(replicas, state, best, *, graphdef, data, num_steps, evaluate_on
                      ) -> Population:
  """Validation of the last state, the choice of parameters, then test and results.json."""
  results = []
  for i, r in enumerate(replicas):
    params = train_state_lib.unstack(state.params, i)
    final_val = evaluate_on(r, params, r.splits.validation)
    if (r.config.train.select_by == "final"
        or final_val["accuracy"] > float(best["accuracy"][i])):
      best = _replace_best(best, i, params, final_val["accuracy"], num_steps)
    results.append(_finish_replica(r, graphdef, train_state_lib.unstack(best["params"], i), data,
                                   final_val=final_val, best_accuracy=float(best["accuracy"][i]),
                                   best_step=int(best["step"][i]), num_steps=num_steps,
                                   population_size=len(replicas),
                                   evaluate_on=lambda p, split, r=r: evaluate_on(r, p, split)))
  return Population(results=results, graphdef=graphdef, state=state,
                    best_params=best["params"], replicas=replicas)


def _evaluate_checkpoint(replicas, manager, state, best, *, graphdef, data, evaluate_on
                         ) -> Population:
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"--eval_only: no checkpoint in {manager.directory}; train the "
                            "run first (its final state is always checkpointed).")
  logging.info("evaluating the checkpoint of step %d without training", step)
  return _final_evaluation(replicas, state, best, graphdef=graphdef, data=data, num_steps=step,
                           evaluate_on=evaluate_on)


def _replace_best(best: dict, i: int, params, accuracy: float, step: int) -> dict:
  """best with replica i's entry set to (params, accuracy, step); copies, never aliases
  the train state (whose buffers the next step donates)."""
  accuracies, steps = np.array(best["accuracy"]), np.array(best["step"])
  accuracies[i], steps[i] = accuracy, step
  return {"params": jax.tree.map(lambda b, p: b.at[i].set(p), best["params"], params),
          "accuracy": accuracies, "step": steps}


def _finish_replica(r: Replica, graphdef, best_params, data, *, final_val, best_accuracy,
                    best_step, num_steps, population_size, evaluate_on):
  config, splits = r.config, r.splits
  test = evaluate_on(best_params, splits.test)
  results = {
      "test_accuracy": test["accuracy"],
      "test_labeled_elbo": test["labeled_elbo"],
      "test_unlabeled_bound": test["unlabeled_bound"],
      "best_validation_accuracy": best_accuracy,
      "best_step": best_step,  # the step of the parameters evaluated on test
      "select_by": config.train.select_by,
      "final_validation": final_val,
      "num_steps": num_steps,
      "labeled_epochs": r.streams["labeled"].epochs_at(num_steps),
      "unlabeled_epochs": r.streams["unlabeled"].epochs_at(num_steps),
      "split_sizes": splits.sizes(),
      "population_size": population_size,
      "seed": config.seed,
  }
  if config.eval.semantic:
    results.update(suite.evaluate_run(config, r.workdir, graphdef=graphdef,
                                      params=best_params, splits=splits, mnist=data))
  files.write_json(os.path.join(r.workdir, "results.json"), results)
  logging.info("%s: %s", r.workdir, results)
  return results


def replica_configs(config) -> list[ml_collections.ConfigDict]:
  """config.num_seeds copies of `config` with seeds seed, seed + 1, ..."""
  if config.num_seeds < 1:
    raise ValueError(f"num_seeds={config.num_seeds}; expected a positive integer.")
  out = []
  for i in range(config.num_seeds):
    c = config.copy_and_resolve_references()
    c.seed, c.num_seeds = config.seed + i, 1
    out.append(c)
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       eval_only: bool = False) -> dict[str, Any]:
  """Trains `config` in `workdir`; returns results.json's content.

  With config.num_seeds = S > 1, trains seeds seed .. seed + S - 1 as one population
  in workdir/seed_<s>/ and returns (and writes as summary.json, .md) the per-seed
  results with each metric's mean and 95% interval. A finished run is not trained
  again. With `eval_only`, the run's last checkpoint is evaluated again instead.

  The launch holds workdir's lock (workdir_lock) throughout: a second launch into a
  workdir that a live run holds raises FolderInUse before touching anything.
  """
  validate(config)
  mnist.check_source(config.data)
  check_workdir(workdir)
  # Process 0 of a multi-host launch holds it for all; a lone process asks no backend,
  # so a refused launch fails before JAX starts.
  lock = not launch.multi_host_launch() or files.is_writer()
  with workdir_lock.hold(workdir) if lock else contextlib.nullcontext():
    return _train_and_evaluate(config, workdir, eval_only=eval_only)


def _train_and_evaluate(config, workdir: str, *, eval_only: bool) -> dict[str, Any]:
  if config.num_seeds == 1:
    if eval_only:
      return train_population([config], [workdir], eval_only=True,
                              checkpoint_dir=os.path.join(workdir, "checkpoints")).results[0]
    if is_finished(config, workdir):
      logging.info("%s holds a finished run of this config; not training again.", workdir)
      with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)
    return train_population([config], [workdir],
                            checkpoint_dir=os.path.join(workdir, "checkpoints")).results[0]
  configs = replica_configs(config)
  workdirs = [os.path.join(workdir, f"seed_{c.seed}") for c in configs]
  todo = [i for i, (c, w) in enumerate(zip(configs, workdirs))
          if eval_only or not is_finished(c, w)]
  per_seed = {}
  if todo:
    population = train_population([configs[i] for i in todo], [workdirs[i] for i in todo],
                                  checkpoint_dir=os.path.join(workdir, "checkpoints"),
                                  eval_only=eval_only)
    # What results.json holds, from memory: on a multi-host launch only process 0 writes
    # the files, so the others cannot read them back.
    per_seed = {configs[i].seed: json.loads(json.dumps(r))
                for i, r in zip(todo, population.results)}
  for c, w in zip(configs, workdirs):  # results.json only: no clock times in the summary
    if c.seed not in per_seed:
      with open(os.path.join(w, "results.json")) as f:
        per_seed[c.seed] = json.load(f)
  return write_summary(workdir, dict(sorted(per_seed.items())))


def write_summary(workdir: str, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
  """summary.json and summary.md: each scalar metric's mean and 95% t-interval over seeds."""
  scalars = sorted(k for k, v in next(iter(per_seed.values())).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed")
  summary = {"seeds": sorted(per_seed), "per_seed": {str(s): r for s, r in per_seed.items()},
             "mean": {}, "interval_95": {}}
  lines = [f"Over seeds {sorted(per_seed)}: mean ± half-width of the 95% t-interval.", "",
           "| metric | mean ± 95% | per seed |", "|---|---|---|"]
  for k in scalars:
    values = [float(r[k]) for r in per_seed.values() if k in r]
    mean, half = stats.mean_and_interval(values)
    summary["mean"][k], summary["interval_95"][k] = mean, half
    lines.append(f"| {k} | {mean:.4g} ± {half:.2g} | {' '.join(f'{v:.4g}' for v in values)} |")
  files.write_json(os.path.join(workdir, "summary.json"), summary)
  files.write_text(os.path.join(workdir, "summary.md"), "\n".join(lines) + "\n")
  return summary


def _validator(config, graphdef, splits, data, evaluate_on):
  """params -> validation metrics, plus the semantic probe's when eval.semantic_curve."""
  probe = (suite.make_semantic_probe(config, graphdef=graphdef, splits=splits, mnist=data)
           if config.eval.semantic_curve else None)

  def validate(params):
    val = evaluate_on(params, splits.validation)
    if probe is not None:
      val.update({f"semantic_{k}": v for k, v in probe(params).items()})
    return val

  return validate


def _check_finite(window: dict[str, np.ndarray], *, first_step: int, replicas, manager):
  """Stops training at the first non-finite metric of the log window, naming the step,
  the term and the replica; checkpoints written before it are kept."""
  bad = {k: np.argwhere(~np.isfinite(v)) for k, v in window.items()}
  bad = {k: v for k, v in bad.items() if len(v)}
  if not bad:
    return
  name = min(bad, key=lambda k: tuple(bad[k][0]))
  offset, replica = bad[name][0]
  value = window[name][offset, replica]
  r = replicas[replica]
  raise FloatingPointError(
      f"step {first_step + offset}: train/{name} = {value} (seed {r.config.seed}, {r.workdir}); "
      f"also non-finite: {sorted(set(bad) - {name})}. Training stopped; the last checkpoint "
      f"(step {manager.latest_step()}) is kept.")


def _write_sample_grid(r: Replica, graphdef, params, step: int) -> None:
  """Decoder means from each y dimension (rows) for TensorBoard, eval.tensorboard_samples
  per row; the same z draws at every evaluation, so the rows can be compared over time."""
  m = r.config.eval.tensorboard_samples
  if m and r.writer is not None:
    key = rng_lib.key(r.config.seed, rng_lib.Stream.SAMPLE_GRID)
    _, means = semantic.generate(graphdef, params, key, num_per_class=m)
    r.writer.write_image(step, "samples_per_y_dimension", metric_writer.tile_samples(means))


def _mean_or_dash(values) -> str:
  """The progress bar's validation accuracy: '-' until the first validation."""
  return "-" if any(np.isnan(values)) else f"{np.mean(values):.3f}"


def _train_loop(config, replicas, state, best, *, train_step, numbers, images, manager,
                validators, placement, graphdef):
  """Steps from state.step to train.num_steps (or the time limit); logs, validates,
  checkpoints (every train.checkpoint_every steps, and always at the end). Returns
  (state, best, the step it stopped at, seconds spent)."""
  num_steps, time_limit = config.train.num_steps, config.train.time_limit_s
  select_best = config.train.select_by == "validation_accuracy"
  history, start_time = [], time.time()
  first = int(fetch(state.step)[0])
  last_accuracy = [float("nan")] * len(replicas)
  bar = tqdm.trange(first, num_steps, disable=not config.train.progress_bar,
                    desc="train", dynamic_ncols=True)
  for step in bar:
    batch = placement.batch(_population_batch(replicas, step))
    state, metrics = train_step(state, batch, numbers, images)
    history.append(metrics)
    done = step + 1
    if time_limit and time.time() - start_time > time_limit and done < num_steps:
      logging.info("train.time_limit_s=%s reached at step %d", time_limit, done)
      num_steps = done  # end here as if configured so: log, evaluate, checkpoint
    if done % config.train.log_every == 0 or done == num_steps:
      window = train_state_lib.stack(fetch(history), xp=np)  # name -> [steps, S]
      _check_finite(window, first_step=done - len(history) + 1, replicas=replicas,
                    manager=manager)
      means = {k: np.mean(v, axis=0) for k, v in window.items()}
      history = []
      validate = done % config.train.eval_every == 0 or done == num_steps
      for i, r in enumerate(replicas):
        record = {"labeled_epochs": r.streams["labeled"].epochs_at(done),
                  "unlabeled_epochs": r.streams["unlabeled"].epochs_at(done),
                  **{f"train/{k}": float(v[i]) for k, v in means.items()}}
        if validate:
          params = train_state_lib.unstack(state.params, i)
          val = validators[i](params)
          record.update({f"validation/{k}": v for k, v in val.items()})
          _write_sample_grid(r, graphdef, params, done)
          last_accuracy[i] = val["accuracy"]
          if select_best and val["accuracy"] > float(best["accuracy"][i]):
            best = _replace_best(best, i, params, val["accuracy"], done)
        r.writer.write_scalars(done, record, wall_s=time.time() - start_time)
      bar.set_postfix(loss=f"{float(means['loss'].mean()):.2f}",
                      val_acc=_mean_or_dash(last_accuracy))
    every = config.train.checkpoint_every
    if (every and done % every == 0) or done == num_steps:
      # A copy: the next step donates (deletes) the state's buffers while orbax may
      # still be writing them in the background.
      saved_state.save(manager, done, jax.tree.map(jnp.copy, state), best)
    if done == num_steps:
      break
  manager.wait_until_finished()
  return state, best, int(fetch(state.step)[0]), time.time() - start_time
