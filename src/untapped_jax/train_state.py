"""One replica's train state (parameters, Adam state, rng, step) and its optimizer.

A population's state is the replicas' states stacked on a leading [S] axis (`stack`).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from untapped_jax import models
from untapped_jax import rng as rng_lib


@struct.dataclass
class TrainState:
  """One replica's state; a population's has a leading [S] axis on every leaf."""
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array


def create_train_state(config, *, seed: int):
  """Returns (graphdef, tx, state) for one fresh replica initialised from `seed`.

  The state is built by one jitted program, compiled once per model and optimizer config
  (and kept by the persistent compilation cache), where building it eagerly compiles each
  initializer and zeros-like of every shape on its own: seconds of every process's start.
  """
  graphdef, tx, init = _jitted_init(_frozen(config.model), _frozen(config.train))
  return graphdef, tx, init(rng_lib.key(seed, rng_lib.Stream.INIT),
                            rng_lib.key(seed, rng_lib.Stream.TRAIN))


def _frozen(section) -> tuple:
  """A config section as a hashable, order-independent key."""
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                      for k, v in section.to_dict().items()))


@functools.lru_cache(maxsize=None)
def _jitted_init(model_items: tuple, train_items: tuple):
  """(graphdef, tx, jitted (init_key, train_key) -> TrainState) of one model/train config."""
  model_config = ml_collections.ConfigDict(dict(model_items))
  tx = make_optimizer(ml_collections.ConfigDict(dict(train_items)))

  def init(init_key, train_key):
    params = nnx.split(models.build_from_key(model_config, init_key))[1]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=train_key)

  graphdef = nnx.split(nnx.eval_shape(
      lambda: models.build(model_config, seed=0)))[0]  # shapes only: no key is drawn
  return graphdef, tx, jax.jit(init)


def stack(trees: Sequence[Any], *, xp=jnp) -> Any:
  """[tree, ...] -> one tree with a leading replica axis on every leaf (xp=np keeps
  host data on the host)."""
  if xp is jnp:
    return _stack_on_device(*trees)
  return jax.tree.map(lambda *leaves: xp.stack(leaves), *trees)


# The tree operations below are one jitted program per tree structure, not one eager op
# per leaf: each eager op is a compilation of its own at a process's start (about 30 ms
# apiece and too quick for the persistent cache to keep; some 60 of them in a run).
@jax.jit
def _stack_on_device(*trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


@jax.jit
def unstack(tree: Any, index: int) -> Any:
  """Replica `index` of a stacked tree (index traced: one program for every replica)."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


@jax.jit
def copy(tree: Any) -> Any:
  """A copy of every leaf in new buffers (what a donating step may not delete)."""
  return jax.tree.map(jnp.copy, tree)


@jax.jit
def set_replica(stacked: Any, index: int, tree: Any) -> Any:
  """`stacked` with replica `index` replaced by `tree` (new buffers; neither is aliased)."""
  return jax.tree.map(lambda s, t: s.at[index].set(t), stacked, tree)


def make_optimizer(train_config) -> optax.GradientTransformation:
  """Adam (learning_rate, adam_eps) after optional clipping: the global norm to
  clip_global_norm, then each element to [-clip_value, clip_value] (0: off), and an
  optional L2 penalty: weight_decay * params added to the gradient before Adam's moments,
  as torch.optim.Adam(weight_decay=...) does (coupled, not AdamW's decoupled decay).

  The learning rate lives in the optimizer state (optax.inject_hyperparams), so
  the replicas of a population can each have their own.
  """
  clips = []
  for key, clip in (("clip_global_norm", optax.clip_by_global_norm), ("clip_value", optax.clip)):
    value = train_config[key]
    if value < 0:
      raise ValueError(f"train.{key}={value}; expected >= 0 (0: no clipping).")
    if value:
      clips.append(clip(value))
  if not train_config.learning_rate > 0:
    raise ValueError(f"train.learning_rate={train_config.learning_rate}; expected > 0.")
  weight_decay = train_config.get("weight_decay", 0.0)
  if not weight_decay >= 0:
    raise ValueError(f"train.weight_decay={weight_decay}; expected >= 0 (0: none).")
  # 0 adds no transformation, so the checkpoints of runs without it keep their structure.
  penalty = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  # The schedule multiplies Adam's step rather than replacing the injected rate, so a
  # population's per-replica learning rates decay alike; 'constant' adds no state, so
  # its checkpoints keep their structure.
  decay = learning_rate_decay(train_config)
  tail = [optax.scale_by_schedule(decay)] if decay is not None else []
  adam = optax.inject_hyperparams(
      lambda learning_rate: optax.chain(*clips, *penalty, optax.adam(learning_rate,
                                                            eps=train_config.adam_eps), *tail))
  return adam(learning_rate=train_config.learning_rate)


LR_SCHEDULES = ("constant", "cosine")


def learning_rate_decay(train_config) -> optax.Schedule | None:
  """The factor on the learning rate at each step: None for 'constant'; for 'cosine',
  1 at step 0 falling as a half cosine to lr_final_fraction at train.num_steps."""
  schedule = train_config.get("lr_schedule", "constant")
  if schedule not in LR_SCHEDULES:
    raise ValueError(f"train.lr_schedule={schedule!r}; expected one of {LR_SCHEDULES}.")
  if schedule == "constant":
    return None
  final = train_config.get("lr_final_fraction", 0.0)
  if not 0.0 <= final <= 1.0:
    raise ValueError(f"train.lr_final_fraction={final}; expected in [0, 1].")
  return optax.cosine_decay_schedule(1.0, decay_steps=int(train_config.num_steps), alpha=final)
