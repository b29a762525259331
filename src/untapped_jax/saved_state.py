"""Orbax checkpoints of a population, and the parameters of a finished run.

A checkpoint holds the stacked train state and the best-validation bookkeeping
(BestState: params, accuracy and step per replica). The latest two are kept, so a newest one
that cannot be read (a disk filled or a file damaged after its commit) costs one
checkpoint interval, not the run.
"""

from __future__ import annotations

import json
import os

from absl import logging
from flax import nnx
from flax import struct
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from untapped_jax import train_state as train_state_lib
from untapped_jax.train_state import TrainState


def manager(checkpoint_dir: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(checkpoint_dir),
      # A run killed mid-save leaves a temporary folder; the rerun removes it.
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True,
                                           cleanup_tmp_directories=True))


def save(manager, step: int, state: TrainState, best: BestState) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             best=ocp.args.StandardSave(best)))


class NoGoodCheckpoint(ValueError):
  """Every checkpoint of a folder failed to restore."""


def restore(manager, state: TrainState, best: BestState) -> tuple[TrainState, BestState]:
  """The latest checkpoint that restores, with the learning rates of `state` (the current
  config's: inject_hyperparams keeps them in the optimizer state, which would otherwise
  bring back the checkpoint's).

  Newer ones that fail are tried no more once an older one restores: they are moved
  aside as STEP.unreadable (kept for a post-mortem, invisible to orbax). If none
  restores, nothing is moved and NoGoodCheckpoint names the folder.
  """
  args = ocp.args.Composite(state=ocp.args.StandardRestore(state),
                            best=ocp.args.StandardRestore(best))
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=args)
      break
    except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many)
      reason = " ".join(str(e).split())[:200]
      failures.append((step, f"step {step}: {type(e).__name__}: {reason}"))
      logging.warning("checkpoint at step %d cannot be restored (%s); trying the one before",
                      step, reason)
  else:
    raise NoGoodCheckpoint(
        f"checkpoints in {str(manager.directory)!r}: none restores "
        f"({'; '.join(f for _, f in failures)}); remove that folder to train from the start.")
  if failures:
    if jax.process_index() == 0:
      for bad, _ in failures:
        folder = os.path.join(str(manager.directory), str(bad))
        os.replace(folder, f"{folder}.unreadable")
    manager.reload()
  logging.info("resumed from step %d", step)
  opt_state = restored.state.opt_state._replace(hyperparams=state.opt_state.hyperparams)
  return restored.state.replace(opt_state=opt_state), restored.best


@struct.dataclass
class BestState:
  """A population's best-validation bookkeeping: per replica, the parameters with the
  best validation accuracy so far, that accuracy and its step (all [S, ...])."""
  params: nnx.State
  # Host NumPy for the per-replica scalars: a checkpoint of several processes takes
  # global arrays or NumPy, not one process's device arrays.
  accuracy: np.ndarray  # float32 [S]
  step: np.ndarray  # int32 [S]

  @classmethod
  def initial(cls, state: TrainState, num_replicas: int) -> "BestState":
    """Before any validation: copies of the parameters, accuracy -1."""
    return cls(params=train_state_lib.copy(state.params),
               accuracy=np.full(num_replicas, -1.0, np.float32),
               step=np.zeros(num_replicas, np.int32))

  def with_replica(self, i: int, params, accuracy: float, step: int) -> "BestState":
    """Replica i's entry set to (params, accuracy, step); copies, never aliases the
    train state (whose buffers the next step donates)."""
    accuracies, steps = np.array(self.accuracy), np.array(self.step)
    accuracies[i], steps[i] = accuracy, step
    return BestState(params=train_state_lib.set_replica(self.params, i, params),
                     accuracy=accuracies, step=steps)


def load_run_params(workdir: str) -> tuple[nnx.GraphDef, nnx.State, ml_collections.ConfigDict]:
  """(graphdef, params, config) of the finished single run in `workdir`.

  The parameters are those its test results were computed with: the best-validation
  ones, or the last with train.select_by='final'. Used to hold a trained model fixed,
  e.g. as the image prior q(x) of another run (objective.image_prior='pretrained').
  """
  config_path = os.path.join(workdir, "config.json")
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isfile(config_path) or not os.path.isdir(checkpoint_dir):
    raise ValueError(f"workdir {workdir!r}: expected a finished single run of untapped-train "
                     "(config.json and checkpoints/ in it).")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.num_seeds != 1:
    raise ValueError(f"workdir {workdir!r} holds a population of {config.num_seeds}; expected "
                     "a single run (num_seeds=1), or one seed's folder trained alone.")
  config.model.hidden = tuple(config.model.hidden)
  graphdef, _, state = train_state_lib.create_train_state(config, seed=config.seed)
  state = train_state_lib.stack([state])
  with manager(checkpoint_dir) as m:
    if m.latest_step() is None:
      raise ValueError(f"workdir {workdir!r}: no checkpoint in {checkpoint_dir}.")
    state, best = restore(m, state, BestState.initial(state, 1))
  params = state.params if config.train.select_by == "final" else best.params
  return graphdef, train_state_lib.unstack(params, 0), config
