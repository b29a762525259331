"""A population: S replicas (seeds, hyperparameters) that share one jitted step.

Replicas may differ only in POPULATION_KEYS, which enter the step as arrays; everything
else (shapes, code paths) is shared, and population_signature says which configs may
train together. A single run is a population of one.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from flax import nnx
import jax
import ml_collections
import numpy as np

from untapped_jax import configs as configs_lib
from untapped_jax import metric_writer
from untapped_jax import objective
from untapped_jax import train_state as train_state_lib
from untapped_jax.data import splits as splits_lib
from untapped_jax.data import streams as streams_lib
from untapped_jax.train_state import TrainState


# Config keys whose values may differ between the replicas of one population: they
# change neither shapes nor code paths, so they enter the jitted step as arrays.
POPULATION_KEYS = ("seed", "num_seeds", "train.learning_rate",
                   "objective.classification_weight", "objective.labeled_weight",
                   "objective.unlabeled_weight", "objective.label_only_weight",
                   "objective.label_smoothing", "objective.classification_temperature",
                   "objective.relaxed_temperature")


def replicas_per_pass(setting: int) -> int:
  """How many replicas the step computes gradients for at once (train.replicas_per_pass):
  `setting` when positive; 0 chooses one at a time on a lone CPU device, where a vmapped
  population's activations outgrow the caches a lone run's fit in (8 replicas vmapped
  cost 1.12x a lone run per replica, one at a time 0.85-0.96x: docs/benchmarks.md), and
  all at once elsewhere (0), where the vmap is what makes a population cheap."""
  if check_replicas_per_pass(setting):
    return setting
  return 1 if jax.default_backend() == "cpu" and jax.device_count() == 1 else 0


def check_replicas_per_pass(setting: int) -> int:
  """`setting`, or a ValueError naming it; asks nothing of the backend, so start-up can
  check it before jax.distributed starts."""
  if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
    raise ValueError(f"train.replicas_per_pass={setting!r}; expected 0 (one at a time on a "
                     "lone CPU device, all at once elsewhere) or a positive integer.")
  return setting


def population_signature(config) -> str:
  """Equal for configs that can share one population: all keys outside POPULATION_KEYS,
  plus the code paths some of those keys switch (a zero label-only weight skips the
  term; a zero classification temperature scores q(y|x) itself)."""
  flat = {k: v for k, v in configs_lib.flatten(config.to_dict()).items() if k not in POPULATION_KEYS}
  flat["_label_only_on"] = objective.uses_label_only(config)
  flat["_concrete_classification"] = objective.uses_concrete_classification(config)
  return json.dumps(flat, sort_keys=True, default=str)


def check_population(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises unless `configs` differ only in POPULATION_KEYS (naming the keys that differ)."""
  if not configs:
    raise ValueError("a population needs at least one config.")
  first = configs[0]
  for other in configs[1:]:
    if population_signature(other) != population_signature(first):
      a, b = configs_lib.flatten(first.to_dict()), configs_lib.flatten(other.to_dict())
      keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
      raise ValueError(
          f"configs differ in {keys}; one population may differ only in {POPULATION_KEYS} "
          "(and not switch the label-only term or the Concrete classification on and off).")


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


def batch_at(replicas: Sequence[Replica], step: int):
  """The replicas' batches of `step`, stacked on a leading replica axis (host NumPy)."""
  return train_state_lib.stack([streams_lib.batch_at(r.streams, step) for r in replicas], xp=np)
