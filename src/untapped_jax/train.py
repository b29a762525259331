"""Train state, the jitted train step, evaluation and the training loop.

The whole train state is one pytree (TrainState); the streams' positions are the
step itself (see data/streams.py), so `train_step(state, batch)` is pure and a
restored checkpoint resumes exactly.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from untapped_jax import files
from untapped_jax import models
from untapped_jax import objective
from untapped_jax.bounds import m2
from untapped_jax.bounds import untapped
from untapped_jax.data import mnist
from untapped_jax.data import splits as splits_lib
from untapped_jax.data import streams as streams_lib
from untapped_jax.evaluate import suite


@struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array


def create_train_state(config, *, seed: int):
  """Returns (graphdef, tx, state) for a fresh model initialised from `seed`."""
  graphdef, params = nnx.split(models.build(config.model, seed=seed))
  tx = make_optimizer(config.train)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params), rng=jax.random.key(seed + 1))
  return graphdef, tx, state


def make_optimizer(train_config) -> optax.GradientTransformation:
  """Adam (learning_rate, adam_eps) after optional clipping: the global norm to
  clip_global_norm, then each element to [-clip_value, clip_value] (0: off)."""
  clips = []
  for key, clip in (("clip_global_norm", optax.clip_by_global_norm), ("clip_value", optax.clip)):
    value = train_config[key]
    if value < 0:
      raise ValueError(f"train.{key}={value}; expected >= 0 (0: no clipping).")
    if value:
      clips.append(clip(value))
  return optax.chain(*clips, optax.adam(train_config.learning_rate, eps=train_config.adam_eps))


def binarize_batch(batch, rng, *, mode: str):
  """Turns every uint8 'x' of the nested batch into floats, a fresh key per stream."""
  out = {}
  for i, (name, arrays) in enumerate(sorted(batch.items())):
    out[name] = {k: streams_lib.binarize(v, jax.random.fold_in(rng, i), mode=mode)
                 if k == "x" else v for k, v in arrays.items()}
  return out


def make_train_step(loss_fn: objective.LossFn, tx: optax.GradientTransformation, *,
                    binarization: str):
  """train_step(state, batch) -> (state, metrics), jitted; batch holds uint8 images."""

  @jax.jit
  def train_step(state: TrainState, batch):
    rng, bin_rng, loss_rng = jax.random.split(state.rng, 3)
    batch = binarize_batch(batch, bin_rng, mode=binarization)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, loss_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         rng=rng), metrics

  return train_step


def make_eval_batch(graphdef: nnx.GraphDef, *, num_classes: int):
  """eval_batch(params, x [B, D] binarised, labels [B], rng) -> per-example sums."""

  @jax.jit
  def eval_batch(params, x, labels, rng):
    model = nnx.merge(graphdef, params)
    y = jax.nn.one_hot(labels, num_classes)
    keys = jax.random.split(rng, (2, len(x)))
    logits = model.classifier(x)
    return {
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
        "labeled_elbo": jnp.sum(jax.vmap(lambda a, b, k: m2.labeled_elbo(model, a, b, k))(
            x, y, keys[0])),
        "unlabeled_bound": jnp.sum(jax.vmap(lambda a, k: m2.unlabeled_bound(model, a, k))(
            x, keys[1])),
    }

  return eval_batch


def evaluate(eval_batch, params, split: splits_lib.Split, *, batch_size: int,
             binarization: str, seed: int) -> dict[str, float]:
  """Accuracy of q(y|x) and mean bounds (nats) over `split`, one fixed binarisation."""
  totals: dict[str, float] = {}
  rng = jax.random.key(seed)
  for start in range(0, len(split), batch_size):
    bin_rng, rng_b = jax.random.split(jax.random.fold_in(rng, start))
    x = streams_lib.binarize(jnp.asarray(split.images[start:start + batch_size]), bin_rng,
                             mode=binarization)
    sums = eval_batch(params, x, jnp.asarray(split.labels[start:start + batch_size]), rng_b)
    for k, v in jax.device_get(sums).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  n = len(split)
  return {"accuracy": totals.pop("correct") / n, **{k: v / n for k, v in totals.items()}}


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
  stacked = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in stacked])) for k in stacked[0]}


def _checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager | None:
  if not config.train.checkpoint_every:
    return None
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


def prepare(config):
  """Loads MNIST; returns (the raw arrays, the splits, the streams) of `config`."""
  data = mnist.load(config.data)
  splits = splits_lib.make_splits(data, config.data, seed=config.seed)
  streams = streams_lib.make_streams(splits, config, seed=config.seed)
  return data, splits, streams


STREAM_WEIGHTINGS = ("dataset", "batch_mean")
LABEL_ONLY_Z = ("prior", "fixed")


def stream_weights(config, *, num_labeled: int, num_unlabeled: int, num_label_only: int
                   ) -> objective.StreamWeights:
  """The coefficients of the streams' batch means for config.objective.stream_weighting."""
  o = config.objective
  label_only_weight = o.label_only_weight if config.model_name == "untapped" else 0.0
  if o.stream_weighting == "dataset":
    return objective.StreamWeights.from_sizes(
        num_labeled=num_labeled, num_unlabeled=num_unlabeled, num_label_only=num_label_only,
        classification_weight=o.classification_weight, label_only_weight=label_only_weight)
  if o.stream_weighting == "batch_mean":
    return objective.StreamWeights.from_batch_means(
        labeled=o.labeled_weight, unlabeled=o.unlabeled_weight,
        classification=o.classification_weight, label_only=label_only_weight)
  raise ValueError(f"objective.stream_weighting={o.stream_weighting!r}; "
                   f"expected one of {STREAM_WEIGHTINGS}.")


def fixed_label_only_z(config, *, seed: int) -> np.ndarray | None:
  """objective.label_only_z='fixed': z [K, S, Z] drawn once from p(z) with `seed`."""
  mode = config.objective.label_only_z
  if mode not in LABEL_ONLY_Z:
    raise ValueError(f"objective.label_only_z={mode!r}; expected one of {LABEL_ONLY_Z}.")
  if mode == "prior":
    return None
  shape = (config.model.num_classes, config.objective.label_only_num_samples,
           config.model.latent_dim)
  return np.asarray(jax.random.normal(jax.random.key(seed + 11), shape))


def build_loss_fn(config, graphdef, *, num_labeled: int, num_unlabeled: int,
                  num_label_only: int, pixel_probs: np.ndarray | None) -> objective.LossFn:
  """The loss of `config.model_name` for splits of the given sizes."""
  name = config.model_name
  if name not in objective.MODEL_NAMES:
    raise ValueError(f"model_name={name!r}; expected one of {objective.MODEL_NAMES}.")
  o = config.objective
  weights = stream_weights(config, num_labeled=num_labeled, num_unlabeled=num_unlabeled,
                           num_label_only=num_label_only)
  label_only = None
  if name == "untapped":
    label_only = objective.LabelOnlySettings.from_config(
        o, pixel_probs=pixel_probs, fixed_z=fixed_label_only_z(config, seed=config.seed))
  return objective.make_loss_fn(graphdef, weights, num_samples=o.num_samples,
                                label_only=label_only,
                                classification_temperature=o.classification_temperature)


def loss_fn_for_splits(config, graphdef, splits) -> objective.LossFn:
  return build_loss_fn(config, graphdef, num_labeled=len(splits.labeled),
                       num_unlabeled=len(splits.unlabeled),
                       num_label_only=len(splits.label_only),
                       pixel_probs=untapped.fit_pixel_bernoulli(splits.train_images))


SELECT_BY = ("validation_accuracy", "final")


def _save_checkpoint(manager, step: int, state: TrainState, best: dict) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             best=ocp.args.StandardSave(best)))


def _restore_checkpoint(manager, state: TrainState, best: dict):
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(state), best=ocp.args.StandardRestore(best)))
  logging.info("resumed from step %d", int(restored.state.step))
  return restored.state, restored.best


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir`; returns (and writes) results.json's content.

  The returned dict also holds the objects a caller may want to inspect:
  'best_params', 'state', 'graphdef', 'splits'.
  """
  if config.train.select_by not in SELECT_BY:
    raise ValueError(f"train.select_by={config.train.select_by!r}; expected one of {SELECT_BY}.")
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  data, splits, streams = prepare(config)
  graphdef, tx, state = create_train_state(config, seed=config.seed)
  train_step = make_train_step(loss_fn_for_splits(config, graphdef, splits), tx,
                               binarization=config.data.binarization)
  eval_batch = make_eval_batch(graphdef, num_classes=config.model.num_classes)
  evaluate_on = lambda params, split: evaluate(
      eval_batch, params, split, batch_size=config.train.eval_batch_size,
      binarization=config.data.binarization, seed=config.seed)

  best = {"params": state.params, "accuracy": jnp.asarray(-1.0), "step": jnp.asarray(0)}
  manager = _checkpoint_manager(workdir, config)
  if manager is not None and manager.latest_step() is not None:
    state, best = _restore_checkpoint(manager, state, best)
  start_time = time.time()
  state, best, num_steps = _train_loop(config, workdir, state, best, train_step=train_step,
                                       streams=streams, manager=manager,
                                       validate=_validator(config, graphdef, splits, data,
                                                           evaluate_on))
  train_wall_s = time.time() - start_time

  final_val = evaluate_on(state.params, splits.validation)
  if config.train.select_by == "final" or final_val["accuracy"] > float(best["accuracy"]):
    best = {"params": state.params, "accuracy": jnp.asarray(final_val["accuracy"]),
            "step": jnp.asarray(num_steps)}
  test = evaluate_on(best["params"], splits.test)
  results = {
      "test_accuracy": test["accuracy"],
      "test_labeled_elbo": test["labeled_elbo"],
      "test_unlabeled_bound": test["unlabeled_bound"],
      "best_validation_accuracy": float(best["accuracy"]),
      "best_step": int(best["step"]),  # the step of the parameters evaluated on test
      "select_by": config.train.select_by,
      "final_validation": final_val,
      "num_steps": num_steps,
      "labeled_epochs": streams["labeled"].epochs_at(num_steps),
      "unlabeled_epochs": streams["unlabeled"].epochs_at(num_steps),
      "split_sizes": splits.sizes(),
      "train_wall_s": train_wall_s,
      "seed": config.seed,
  }
  if config.eval.semantic:
    results.update(suite.evaluate_run(config, workdir, graphdef=graphdef,
                                      params=best["params"], splits=splits, mnist=data))
  files.write_json(os.path.join(workdir, "results.json"), results)
  logging.info("results: %s", results)
  return {**results, "best_params": best["params"], "state": state, "graphdef": graphdef,
          "splits": splits}


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


def _train_loop(config, workdir, state, best, *, train_step, streams, manager, validate):
  """Steps from state.step to train.num_steps (or the time limit); logs, validates,
  checkpoints. Returns (state, best, the step it stopped at)."""
  num_steps, time_limit = config.train.num_steps, config.train.time_limit_s
  select_best = config.train.select_by == "validation_accuracy"
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history, start_time = [], time.time()
  bar = tqdm.trange(int(state.step), num_steps, disable=not config.train.progress_bar,
                    desc="train", dynamic_ncols=True)
  for step in bar:
    state, metrics = train_step(state, streams_lib.batch_at(streams, step))
    history.append(metrics)
    done = step + 1
    if time_limit and time.time() - start_time > time_limit and done < num_steps:
      logging.info("train.time_limit_s=%s reached at step %d", time_limit, done)
      num_steps = done  # end here as if configured so: log, evaluate, checkpoint
    if done % config.train.log_every == 0 or done == num_steps:
      record = {"step": done, "wall_s": time.time() - start_time,
                "labeled_epochs": streams["labeled"].epochs_at(done),
                "unlabeled_epochs": streams["unlabeled"].epochs_at(done),
                **{f"train/{k}": v for k, v in _mean_metrics(history).items()}}
      history = []
      if done % config.train.eval_every == 0 or done == num_steps:
        val = validate(state.params)
        record.update({f"validation/{k}": v for k, v in val.items()})
        if select_best and val["accuracy"] > float(best["accuracy"]):
          best = {"params": state.params, "accuracy": jnp.asarray(val["accuracy"]),
                  "step": jnp.asarray(done)}
      bar.set_postfix(loss=f"{record['train/loss']:.2f}",
                      acc=f"{record.get('validation/accuracy', float('nan')):.3f}")
      with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if manager is not None and (done % config.train.checkpoint_every == 0 or done == num_steps):
      _save_checkpoint(manager, done, state, best)
    if done == num_steps:
      break
  if manager is not None:
    manager.wait_until_finished()
  return state, best, int(state.step)
