"""A run folder at start-up: the config checked before any data is read, the folder's
identity (the experiment it already holds, whether it is finished) and its writability.

Every check raises ValueError naming the key or folder, the value and what is accepted,
which the command-line tools print as one line (launch.one_line_errors).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile

import numpy as np

from untapped_jax import configs as configs_lib
from untapped_jax.configs import default as default_config
from untapped_jax import models
from untapped_jax import objective
from untapped_jax import population as population_lib
from untapped_jax import train_state as train_state_lib
from untapped_jax.data import splits as splits_lib
from untapped_jax.data import streams as streams_lib


SELECT_BY = ("validation_accuracy", "final")
POSITIVE_INTS = ("num_seeds", "data.labeled_batch_size", "data.unlabeled_batch_size",
                 "data.label_only_batch_size", "train.num_steps", "train.log_every",
                 "train.eval_every", "train.eval_batch_size", "objective.num_samples",
                 "objective.label_only_num_samples", "model.latent_dim")


def validate(config) -> None:
  """Every check of `config` that needs no data, run at start-up before MNIST is loaded:
  each failure is a ValueError naming the key, the value and what is accepted."""
  flat = configs_lib.flatten(config.to_dict())
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
  models.compute_dtype(config.model.compute_dtype)
  models.matmul_precision(config.model.matmul_precision)
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
  population_lib.check_replicas_per_pass(config.train.replicas_per_pass)
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
    old = saved_config(json.load(f))
  new = flat_config(config)
  # Under a decaying learning rate the length is part of the schedule, so not a continuation.
  continuation = tuple(k for k in CONTINUATION_KEYS if k != "train.num_steps"
                       or new.get("train.lr_schedule", "constant") == "constant")
  differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                  and k not in continuation and not k.startswith("eval."))
  if differ:
    raise ValueError(
        f"workdir {workdir!r} holds a run of another config: {differ} differ "
        f"({', '.join(f'{k}: {old.get(k)!r} there, {new.get(k)!r} here' for k in differ[:4])}). "
        f"Use another workdir; a rerun may change only {continuation} and eval.*.")


def check_workdir(workdir: str) -> None:
  """Creates `workdir` and checks that a file can be written in it."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".writable"):
      pass  # every process of a launch checks, though only process 0 writes
  except OSError as e:
    raise ValueError(f"workdir {workdir!r} is not writable ({e}); expected a folder this "
                     "process can create files in.") from e


def is_finished(config, workdir: str) -> bool:
  """True when `workdir` holds results.json of a run of exactly `config`."""
  paths = [os.path.join(workdir, n) for n in ("results.json", "config.json")]
  if not all(os.path.exists(p) for p in paths):
    return False
  with open(paths[1]) as f:
    return saved_config(json.load(f)) == flat_config(config)


def flat_config(config) -> dict:
  """`config` flattened as its config.json reads back (tuples as lists): {"train.lr": ...}."""
  return configs_lib.flatten(json.loads(json.dumps(config.to_dict())))


def saved_config(saved: dict) -> dict:
  """A run's config.json, flattened, with the keys added to the package since it was
  written set to their defaults: a key that did not exist then ran as its default does
  now (train.weight_decay 0, say), so an older run stays the same experiment."""
  flat = configs_lib.flatten(saved)
  defaults = flat_config(default_config.get_config())
  return {**{k: v for k, v in defaults.items() if k not in flat}, **flat}


class RunFolderUnwritable(RuntimeError):
  """Writing a run's files failed while it trained (a full disk, a folder made read-only)."""


# What a full or read-only disk raises; anything else keeps its traceback.
UNWRITABLE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                     errno.EIO)


def unwritable_error(e: OSError, *, last_checkpoint: int | None) -> RunFolderUnwritable | None:
  """The one-line error for `e` when it says the disk took no more writes, else None."""
  if e.errno not in UNWRITABLE_ERRNOS:
    return None
  kept = ("no checkpoint was written yet, so the rerun starts over" if last_checkpoint is None
          else f"the last checkpoint (step {last_checkpoint}) is intact and the rerun "
               "resumes from it")
  return RunFolderUnwritable(
      f"writing {e.filename or 'a run file'!r} failed ({e.strerror}); training stopped and "
      f"{kept}: free space or make the folder writable, then run the same command again.")
