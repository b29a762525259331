"""The jitted step and the training loop of a population (population.py): S replicas
(seeds, hyperparameters) in one step, then each replica's final evaluation.

The train state is one pytree (TrainState) whose leaves carry a leading replica
axis [S, ...]. A single run is a population of one, so it goes through the same code
(its gradients skip the vmap over the axis of one: make_train_step).
Start-up checks are run_dir's, device placement placement's, checkpoints saved_state's.

The streams' positions are the step itself (see data/streams.py), so the step is
a pure function of (state, batch) and a restored checkpoint resumes exactly.
MNIST's training images live on the device; each step receives only row indices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, NamedTuple, Sequence

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

import untapped_jax
from untapped_jax import compiler_options
from untapped_jax import files
from untapped_jax import host_memory
from untapped_jax import launch
from untapped_jax import metric_writer
from untapped_jax import objective
from untapped_jax import placement as placement_lib
from untapped_jax import population as population_lib
from untapped_jax import rng as rng_lib
from untapped_jax import run_dir
from untapped_jax import saved_state
from untapped_jax import stats
from untapped_jax import tables
from untapped_jax import train_state as train_state_lib
from untapped_jax import workdir_lock
from untapped_jax.population import Population
from untapped_jax.population import Replica
from untapped_jax.train_state import TrainState
from untapped_jax.data import mnist
from untapped_jax.data import splits as splits_lib
from untapped_jax.data import streams as streams_lib
from untapped_jax.evaluate import heldout
from untapped_jax.evaluate import generation
from untapped_jax.evaluate import suite

# A population computed one replica at a time writes out at most this many replicas'
# gradients in the step (its compile time grows with them: 26 s against 9 s for a lone
# run's at S = 8 on the 2-core Xeon); more are scanned.
MAX_REPLICAS_WRITTEN_OUT = 8


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
  replicas, kept on the device). The step computes the replicas' gradients in passes of
  population.replicas_per_pass (all at once: vmapped; a population of one without the
  singleton axis) and updates them vmapped, is compiled with
  compiler_options.train_step_options, and donates its input state, whose buffers it
  overwrites.
  """
  per_pass = population_lib.replicas_per_pass(config.train.get("replicas_per_pass", 0))

  def replica_gradients(state: TrainState, batch, numbers, images):
    """(gradients, the state's next key, metrics) of one replica."""
    loss_fn = objective.loss_fn_from_numbers(config, graphdef, numbers)
    rng, bin_rng, loss_rng = jax.random.split(state.rng, 3)
    batch = binarize_batch(streams_lib.gather_images(batch, images), bin_rng,
                           mode=config.data.binarization)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, loss_rng)
    return grads, rng, dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))

  def apply_gradients(state: TrainState, grads, rng) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)

  def population_step(state: TrainState, batch, numbers, images):
    if _population_size(state) == 1:
      # A lone run's gradients skip the vmap: over a singleton axis it gives XLA batched
      # dots whose operands it transposes, 3-7% of an M2 step on the CPU
      # (docs/benchmarks.md). The update stays vmapped: without the axis XLA copies
      # Adam's moments before updating them in place.
      only = lambda tree: jax.tree.map(lambda a: a[0], tree)
      grads, rng, metrics = replica_gradients(only(state), only(batch), only(numbers), images)
      grads, rng, metrics = jax.tree.map(lambda a: a[None], (grads, rng, metrics))
    elif 0 < per_pass < _population_size(state):
      # Replicas in passes of `per_pass`, so that each pass's activations stay in the
      # caches a lone run's fit in; one at a time they skip the vmap, as above.
      one = lambda args: replica_gradients(*args, images)
      size = _population_size(state)
      if per_pass == 1 and size <= MAX_REPLICAS_WRITTEN_OUT:
        # Written out rather than scanned: per replica against a lone run, a scan cost
        # 1.04-1.06 at S = 4 and 0.988 at S = 8, written out 0.995 and 0.957
        # (docs/benchmarks.md).
        grads, rng, metrics = jax.tree.map(lambda *a: jnp.stack(a), *[
            one(jax.tree.map(lambda a, i=i: a[i], (state, batch, numbers)))
            for i in range(size)])
      else:
        grads, rng, metrics = jax.lax.map(one, (state, batch, numbers),
                                          batch_size=None if per_pass == 1 else per_pass)
    else:
      grads, rng, metrics = jax.vmap(replica_gradients, in_axes=(0, 0, 0, None))(
          state, batch, numbers, images)
    return jax.vmap(apply_gradients)(state, grads, rng), metrics

  options = compiler_options.train_step_options(
      xla_cpu_ynnpack=config.train.get("xla_cpu_ynnpack", False),
      matmul_precision=config.model.get("matmul_precision", "default"))
  return jax.jit(population_step, donate_argnums=0, compiler_options=options)


def _population_size(state: TrainState) -> int:
  return jax.tree.leaves(state)[0].shape[0]


@dataclasses.dataclass(frozen=True)
class Session:
  """What one population's training and evaluation share, fixed while it runs."""
  config: ml_collections.ConfigDict  # replica 0's: shapes and code paths are common
  replicas: list[Replica]
  graphdef: nnx.GraphDef
  data: dict[str, Any]  # mnist.load
  placement: placement_lib.Placement
  manager: Any  # orbax.checkpoint.CheckpointManager

  def evaluate(self, i: int, params, split) -> dict[str, Any]:
    """heldout.evaluate of replica i's parameters (unstacked) on one of its splits."""
    return heldout.evaluate(self.graphdef, params, split,
                            batch_size=self.config.train.eval_batch_size,
                            binarization=self.config.data.binarization,
                            seed=self.replicas[i].config.seed)


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """The jitted population step with the inputs that stay fixed between steps."""
  train_step: Any  # make_train_step's
  numbers: Any  # objective.loss_numbers per replica, stacked and placed
  images: jax.Array  # uint8 [N, D], on the devices

  def __call__(self, state: TrainState, batch):
    return self.train_step(state, batch, self.numbers, self.images)


class LoopEnd(NamedTuple):
  state: TrainState
  best: saved_state.BestState
  num_steps: int  # the step training stopped at
  wall_s: float  # seconds spent in the loop
  first_step_s: float | None  # this attempt's first step, compilation included (None: none ran)


def train_population(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                     *, checkpoint_dir: str, eval_only: bool = False) -> Population:
  """Trains the replicas `configs` (see population.check_population) as one vmapped
  population.

  Replica i writes config.json, metrics.jsonl, results.json (and the semantic
  evaluation's files) to workdirs[i]; the population's checkpoints, which hold all
  replicas, go to `checkpoint_dir`. Rerunning resumes from the latest checkpoint.
  With `eval_only`, nothing trains: the latest checkpoint is evaluated again and
  results.json rewritten. Wall-clock times go to timings.jsonl and timing.json only,
  so metrics.jsonl and results.json are the same bytes however often the run was
  killed and resumed.
  """
  population_lib.check_population(configs)
  if len(set(map(os.path.abspath, workdirs))) != len(configs):
    raise ValueError(f"workdirs={list(workdirs)}: expected {len(configs)} distinct folders.")
  for c, workdir in zip(configs, workdirs):
    run_dir.validate(c)
    run_dir.check_same_experiment(c, workdir)
    run_dir.check_workdir(workdir)
  data = mnist.load(configs[0].data)
  replicas = []
  for c, workdir in zip(configs, workdirs):
    splits = splits_lib.make_splits(data, c.data, seed=c.seed)
    replicas.append(Replica(c, workdir, splits, streams_lib.make_streams(splits, c, seed=c.seed)))
  for r in replicas:
    stale = os.path.join(r.workdir, "results.json")
    if not eval_only and os.path.exists(stale) and files.is_writer():
      os.remove(stale)  # another config's results, about to be replaced
  placement = placement_lib.Placement.for_population(len(replicas))
  created = [train_state_lib.create_train_state(c, seed=c.seed) for c in configs]
  graphdef, tx = created[0][:2]
  state = placement.per_replica(train_state_lib.stack([s for _, _, s in created]))
  s = Session(config=configs[0], replicas=replicas, graphdef=graphdef, data=data,
              placement=placement, manager=saved_state.manager(checkpoint_dir))
  best = saved_state.BestState.initial(state, len(replicas))
  if s.manager.latest_step() is not None:
    state, best = saved_state.restore(s.manager, state, best)
  if eval_only:
    step = s.manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"--eval_only: no checkpoint in {s.manager.directory}; train "
                              "the run first (its final state is always checkpointed).")
    logging.info("evaluating the checkpoint of step %d without training", step)
    return _final_evaluation(s, state, best, num_steps=step)
  step_fn = CompiledStep(
      train_step=make_train_step(s.config, graphdef, tx),
      numbers=placement.per_replica(train_state_lib.stack(
          [objective.numbers_for_splits(r.config, r.splits) for r in replicas])),
      images=placement.replicated(data["train_images"]))
  for r in replicas:
    r.writer = metric_writer.MetricWriter(r.workdir, config=r.config.to_dict(),
                                          resume_step=s.manager.latest_step() or 0,
                                          tensorboard=s.config.train.tensorboard)
  startup_s = time.time() - untapped_jax.IMPORTED_AT
  try:
    try:
      end = _train_loop(s, state, best, step_fn)
    finally:  # whatever stopped training: commit the checkpoints already begun, flush logs
      s.manager.wait_until_finished()
      for r in replicas:
        r.writer.close()
  except OSError as e:  # the files are written atomically: what was written is whole
    unwritable = run_dir.unwritable_error(e, last_checkpoint=s.manager.latest_step())
    if unwritable is None:
      raise
    raise unwritable from e
  timings = {r.workdir: {"num_steps": end.num_steps, "population_size": len(replicas),
                         "startup_s": startup_s, "first_step_s": end.first_step_s,
                         "train_wall_s": r.writer.wall_s_before + end.wall_s,
                         "peak_rss_mb": host_memory.peak_resident_mb()}
             for r in replicas}
  _write_timing(replicas, timings)
  evaluation_start = time.time()
  population = _final_evaluation(s, end.state, end.best, num_steps=end.num_steps)
  ended = {"final_evaluation_s": time.time() - evaluation_start,
           "process_s": time.time() - untapped_jax.IMPORTED_AT,
           "peak_rss_mb": host_memory.peak_resident_mb()}
  _write_timing(replicas, {w: {**t, **ended} for w, t in timings.items()})
  return population


def _write_timing(replicas: Sequence[Replica], by_workdir: dict[str, dict[str, Any]]) -> None:
  """timing.json of each replica: this attempt's start-up (package import to the first
  step), its first step (compilation included), the training seconds over all attempts,
  and, once results.json is written, the final evaluation and the whole process; and the
  process's peak resident memory so far (MiB; the whole population's, shared)."""
  if files.is_writer():
    for r in replicas:
      files.write_json(os.path.join(r.workdir, metric_writer.TIMING_FILE), by_workdir[r.workdir])


def _train_loop(s: Session, state: TrainState, best: saved_state.BestState,
                step_fn: CompiledStep) -> LoopEnd:
  """Steps from state.step to train.num_steps (or the time limit); logs, validates,
  checkpoints (every train.checkpoint_every steps, and always at the end)."""
  config, replicas = s.config, s.replicas
  num_steps, time_limit = config.train.num_steps, config.train.time_limit_s
  select_best = config.train.select_by == "validation_accuracy"
  validators = [_validator(s, i) for i in range(len(replicas))]
  history, start_time = [], time.time()
  first = int(placement_lib.fetch(state.step)[0])
  last_accuracy = [float("nan")] * len(replicas)
  bar = tqdm.trange(first, num_steps, disable=not config.train.progress_bar,
                    desc="train", dynamic_ncols=True)
  first_step_s = None
  for step in bar:
    state, metrics = step_fn(state, s.placement.batch(population_lib.batch_at(replicas, step)))
    if first_step_s is None:
      jax.block_until_ready(metrics)
      first_step_s = time.time() - start_time
    history.append(metrics)
    done = step + 1
    if time_limit and time.time() - start_time > time_limit and done < num_steps:
      logging.info("train.time_limit_s=%s reached at step %d", time_limit, done)
      num_steps = done  # end here as if configured so: log, evaluate, checkpoint
    if done % config.train.log_every == 0 or done == num_steps:
      window = train_state_lib.stack(placement_lib.fetch(history), xp=np)  # name -> [steps, S]
      _check_finite(window, first_step=done - len(history) + 1, s=s)
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
          _write_sample_grid(r, s.graphdef, params, done)
          last_accuracy[i] = val["accuracy"]
          if select_best and val["accuracy"] > float(best.accuracy[i]):
            best = best.with_replica(i, params, val["accuracy"], done)
        r.writer.write_scalars(done, record, wall_s=time.time() - start_time)
      bar.set_postfix(loss=f"{float(means['loss'].mean()):.2f}",
                      val_acc=_mean_or_dash(last_accuracy))
    every = config.train.checkpoint_every
    if (every and done % every == 0) or done == num_steps:
      # A copy: the next step donates (deletes) the state's buffers while orbax may
      # still be writing them in the background.
      saved_state.save(s.manager, done, train_state_lib.copy(state), best)
    if done == num_steps:
      break
  s.manager.wait_until_finished()
  return LoopEnd(state, best, int(placement_lib.fetch(state.step)[0]), time.time() - start_time,
                 first_step_s)


def _final_evaluation(s: Session, state: TrainState, best: saved_state.BestState, *,
                      num_steps: int) -> Population:
  """Validation of the last state, the choice of parameters, then test and results.json."""
  results = []
  for i, r in enumerate(s.replicas):
    params = train_state_lib.unstack(state.params, i)
    final_val = s.evaluate(i, params, r.splits.validation)
    if (r.config.train.select_by == "final"
        or final_val["accuracy"] > float(best.accuracy[i])):
      best = best.with_replica(i, params, final_val["accuracy"], num_steps)
    results.append(_finish_replica(s, i, best, final_val=final_val, num_steps=num_steps))
  return Population(results=results, graphdef=s.graphdef, state=state,
                    best_params=best.params, replicas=s.replicas)


def _finish_replica(s: Session, i: int, best: saved_state.BestState, *,
                    final_val: dict[str, Any], num_steps: int) -> dict[str, Any]:
  """Replica i's test evaluation of its chosen parameters; writes results.json."""
  r = s.replicas[i]
  config, splits = r.config, r.splits
  best_params = train_state_lib.unstack(best.params, i)
  test = s.evaluate(i, best_params, splits.test)
  results = {
      "test_accuracy": test["accuracy"],
      "test_labeled_elbo": test["labeled_elbo"],
      "test_unlabeled_bound": test["unlabeled_bound"],
      "best_validation_accuracy": float(best.accuracy[i]),
      "best_step": int(best.step[i]),  # the step of the parameters evaluated on test
      "select_by": config.train.select_by,
      "final_validation": final_val,
      "num_steps": num_steps,
      "labeled_epochs": r.streams["labeled"].epochs_at(num_steps),
      "unlabeled_epochs": r.streams["unlabeled"].epochs_at(num_steps),
      "split_sizes": splits.sizes(),
      "population_size": len(s.replicas),
      "seed": config.seed,
  }
  if config.eval.semantic:
    results.update(suite.evaluate_run(config, r.workdir, graphdef=s.graphdef,
                                      params=best_params, splits=splits, mnist=s.data))
  files.write_json(os.path.join(r.workdir, "results.json"), results)
  logging.info("%s: %s", r.workdir, results)
  return results


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
  run_dir.validate(config)
  mnist.check_source(config.data)
  run_dir.check_workdir(workdir)
  # Process 0 of a multi-host launch holds it for all; a lone process asks no backend,
  # so a refused launch fails before JAX starts.
  lock = not launch.multi_host_launch() or files.is_writer()
  with workdir_lock.hold(workdir) if lock else contextlib.nullcontext():
    return _train_and_evaluate(config, workdir, eval_only=eval_only)


def _train_and_evaluate(config, workdir: str, *, eval_only: bool) -> dict[str, Any]:
  if config.num_seeds == 1:
    if not eval_only and run_dir.is_finished(config, workdir):
      logging.info("%s holds a finished run of this config; not training again.", workdir)
      return _read_results_json(workdir)
    return train_population([config], [workdir], eval_only=eval_only,
                            checkpoint_dir=os.path.join(workdir, "checkpoints")).results[0]
  configs = population_lib.replica_configs(config)
  workdirs = [os.path.join(workdir, f"seed_{c.seed}") for c in configs]
  todo = [i for i, (c, w) in enumerate(zip(configs, workdirs))
          if eval_only or not run_dir.is_finished(c, w)]
  per_seed = {}
  if todo:
    trained = train_population([configs[i] for i in todo], [workdirs[i] for i in todo],
                               checkpoint_dir=os.path.join(workdir, "checkpoints"),
                               eval_only=eval_only)
    # What results.json holds, from memory: on a multi-host launch only process 0 writes
    # the files, so the others cannot read them back.
    per_seed = {configs[i].seed: json.loads(json.dumps(r))
                for i, r in zip(todo, trained.results)}
  for c, w in zip(configs, workdirs):  # results.json only: no clock times in the summary
    if c.seed not in per_seed:
      per_seed[c.seed] = _read_results_json(w)
  return write_summary(workdir, dict(sorted(per_seed.items())))


def _read_results_json(workdir: str) -> dict[str, Any]:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def write_summary(workdir: str, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
  """summary.json (each scalar metric's mean and 95% t-interval over seeds) and
  summary.md (tables.seed_tables of the seeds)."""
  scalars = sorted(k for k, v in next(iter(per_seed.values())).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed")
  summary = {"seeds": sorted(per_seed), "per_seed": {str(s): r for s, r in per_seed.items()},
             "mean": {}, "interval_95": {}}
  for k in scalars:
    mean, half = stats.mean_and_interval([float(r[k]) for r in per_seed.values() if k in r])
    summary["mean"][k], summary["interval_95"][k] = mean, half
  md, _ = tables.seed_tables({os.path.basename(os.path.normpath(workdir)): per_seed},
                             metrics=tuple(scalars))
  files.write_json(os.path.join(workdir, "summary.json"), summary)
  files.write_text(os.path.join(workdir, "summary.md"), md)
  return summary


def _validator(s: Session, i: int):
  """params -> replica i's validation metrics, plus the semantic probe's when
  eval.semantic_curve."""
  r = s.replicas[i]
  probe = (suite.make_semantic_probe(r.config, graphdef=s.graphdef, splits=r.splits,
                                     mnist=s.data)
           if r.config.eval.semantic_curve else None)

  def validate(params):
    val = s.evaluate(i, params, r.splits.validation)
    if probe is not None:
      val.update({f"semantic_{k}": v for k, v in probe(params).items()})
    return val

  return validate


def _check_finite(window: dict[str, np.ndarray], *, first_step: int, s: Session) -> None:
  """Stops training at the first non-finite metric of the log window, naming the step,
  the term and the replica; checkpoints written before it are kept."""
  bad = {k: np.argwhere(~np.isfinite(v)) for k, v in window.items()}
  bad = {k: v for k, v in bad.items() if len(v)}
  if not bad:
    return
  name = min(bad, key=lambda k: tuple(bad[k][0]))
  offset, replica = bad[name][0]
  value = window[name][offset, replica]
  r = s.replicas[replica]
  raise FloatingPointError(
      f"step {first_step + offset}: train/{name} = {value} (seed {r.config.seed}, {r.workdir}); "
      f"also non-finite: {sorted(set(bad) - {name})}. Training stopped; the last checkpoint "
      f"(step {s.manager.latest_step()}) is kept.")


def _write_sample_grid(r: Replica, graphdef, params, step: int) -> None:
  """Decoder means from each y dimension (rows) for TensorBoard, eval.tensorboard_samples
  per row; the same z draws at every evaluation, so the rows can be compared over time."""
  m = r.config.eval.tensorboard_samples
  if m and r.writer is not None:
    key = rng_lib.key(r.config.seed, rng_lib.Stream.SAMPLE_GRID)
    _, means = generation.generate(graphdef, params, key, num_per_class=m)
    r.writer.write_image(step, "samples_per_y_dimension", metric_writer.tile_samples(means))


def _mean_or_dash(values) -> str:
  """The progress bar's validation accuracy: '-' until the first validation."""
  return "-" if any(np.isnan(values)) else f"{np.mean(values):.3f}"
