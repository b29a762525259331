r"""Runs every point of a config file's sweep and tabulates the final metrics.

  untapped-sweep --config experiments/configs/poster.py:sweep=screen --workdir runs/screen \
      [--shard 0 --num_shards 2] [--max_population 8] [--report_only] [--eval_only] \
      [--reference model_name=m2] [--config.train.num_steps=3000]
  untapped-compare --workdir runs/compare   # the same, over poster.py:sweep=compare

The sweep is the config file's `get_hyper(hyper, arg)` (big_vision style): a list of
points, each a dict of 'config.<key>' overrides built with hyper.sweep / product /
zipit. Point p runs in WORKDIR/<its overrides but the seed>/seed_<s>. Points whose
configs differ only in what population.POPULATION_KEYS allows (seeds, loss weights, the
learning rate, ...) train together as one vmapped population (train.train_population),
checkpointed under WORKDIR/populations/. A point finished with the same config is
skipped, so a rerun finishes an interrupted sweep; shards (--shard i --num_shards n,
one process each) split the populations between processes.
Every run writes its own results.json; the sweep writes sweep.md and sweep.csv: per
variant, the mean and 95% t-interval over seeds of each metric, per-seed rows, and
paired differences (variant minus --reference, per seed).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import itertools
import os
from typing import Any

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import jax
import numpy as np

from untapped_jax import files
from untapped_jax import launch
from untapped_jax import metric_writer
from untapped_jax import population
from untapped_jax import run_dir
from untapped_jax import tables
from untapped_jax import train
from untapped_jax import workdir_lock
from untapped_jax.data import mnist



# Final metrics tabulated per variant (those a run lacks are left out).
class Hyper:
  """big_vision's sweep helpers: lists of dicts of 'config.<key>' overrides."""

  @staticmethod
  def sweep(key: str, values) -> list[dict[str, Any]]:
    return [{key: v} for v in values]

  @staticmethod
  def product(sweeps) -> list[dict[str, Any]]:
    return [dict(itertools.chain.from_iterable(d.items() for d in combo))
            for combo in itertools.product(*sweeps)]

  @staticmethod
  def zipit(sweeps) -> list[dict[str, Any]]:
    lengths = {len(s) for s in sweeps}
    if len(lengths) != 1:
      raise ValueError(f"zipit over sweeps of lengths {sorted(lengths)}; expected one length.")
    return [dict(itertools.chain.from_iterable(d.items() for d in combo))
            for combo in zip(*sweeps)]


def load_points(config_path: str) -> list[dict[str, Any]]:
  """The points of FILE[:ARG]'s get_hyper(hyper[, arg])."""
  path, _, arg = config_path.partition(":")
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_hyper"):
    raise ValueError(f"{path} defines no get_hyper(hyper); nothing to sweep.")
  takes_arg = len(inspect.signature(module.get_hyper).parameters) > 1
  points = module.get_hyper(Hyper, arg or None) if takes_arg else module.get_hyper(Hyper)
  for point in points:
    bad = [k for k in point if not k.startswith("config.")]
    if bad:
      raise ValueError(f"sweep keys {bad}: expected 'config.<key>' names.")
  return points


def variant_name(point: dict[str, Any]) -> str:
  """'key=value,...' of a point's overrides but the seed (folder and table name)."""
  items = [(k.removeprefix("config."), v) for k, v in sorted(point.items())
           if k != "config.seed"]
  return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in items) or "default"


def point_dir(root: str, point: dict[str, Any]) -> str:
  return os.path.join(root, variant_name(point), f"seed_{point.get('config.seed', 0)}")


def apply_point(config, point: dict[str, Any]):
  config = config.copy_and_resolve_references()
  for key, value in point.items():
    target = config
    *parents, leaf = key.removeprefix("config.").split(".")
    for name in parents:
      target = target[name]
    if leaf not in target:
      raise KeyError(f"sweep key {key!r}: the config has no such key.")
    target[leaf] = value
  return config


def plan_populations(config, points, root: str, *, max_population: int = 0
                     ) -> list[list[tuple[dict[str, Any], Any, str]]]:
  """Groups the points into populations: (point, config, workdir) lists whose configs
  differ only in population.POPULATION_KEYS (seeds, weights, learning rate, ...), in the
  points' order, each at most `max_population` long (0: no cap).

  Capped groups are taken in turn (the first chunk of every group, then the second, ...):
  a seed-major sweep cut short, or still running, has every variant at its first seeds,
  so paired comparisons can be read off it at any time.

  The plan covers finished points too, so every shard process computes the same plan
  whatever the others have finished.
  """
  if max_population < 0:
    raise ValueError(f"max_population={max_population}; expected >= 0 (0: no cap).")
  groups: dict[str, list] = {}
  for point in points:
    c = apply_point(config, point)
    groups.setdefault(population.population_signature(c), []).append(
        (point, c, point_dir(root, point)))
  chunks = []
  for members in groups.values():
    size = max_population or len(members)
    chunks.append([members[i:i + size] for i in range(0, len(members), size)])
  return [c for turn in itertools.zip_longest(*chunks) for c in turn if c is not None]


def population_checkpoint_dir(root: str, workdirs) -> str:
  """Checkpoints of the population of exactly these run folders."""
  key = hashlib.sha1("\n".join(sorted(os.path.relpath(w, root) for w in workdirs)).encode())
  return os.path.join(root, "populations", key.hexdigest()[:12], "checkpoints")


def run_points(config, points, root: str, *, shard: int, num_shards: int,
               max_population: int = 0, eval_only: bool = False) -> None:
  """Trains this shard's populations (plan_populations; population g goes to shard
  g mod num_shards), leaving out points already finished with the same config.

  With `eval_only`, nothing trains: every finished population is evaluated again from
  its checkpoint (results.json rewritten, e.g. after the evaluation gained a metric).
  """
  plan = plan_populations(config, points, root, max_population=max_population)
  for members in plan:  # a bad point stops the sweep at start-up, not hours in
    for _, c, _ in members:
      run_dir.validate(c)
      mnist.check_source(c.data)
  for g, members in enumerate(plan):
    if g % num_shards != shard:
      continue
    if eval_only:
      done = [(c, w) for _, c, w in members if run_dir.is_finished(c, w)]
      workdirs = [w for _, w in done]
      checkpoint_dir = population_checkpoint_dir(root, workdirs)
      if done and os.path.isdir(checkpoint_dir):
        logging.info("population %d/%d: evaluating %s again", g + 1, len(plan), workdirs)
        train.train_population([c for c, _ in done], workdirs, checkpoint_dir=checkpoint_dir,
                               eval_only=True)
      elif done:
        logging.warning("population %d/%d: no checkpoint of exactly %s (trained in other "
                        "groupings); not evaluated again", g + 1, len(plan), workdirs)
      continue
    unfinished = [(c, w) for _, c, w in members if not run_dir.is_finished(c, w)]
    if len(unfinished) < len(members):
      logging.info("population %d/%d: %d of %d points already finished", g + 1, len(plan),
                   len(members) - len(unfinished), len(members))
    if not unfinished:
      continue
    with _hold_available([w for _, w in unfinished]) as held:
      # Finished-ness is read again under the locks: another process may have finished a
      # point between the plan and now.
      todo = [(c, w) for c, w in unfinished if w in held and not run_dir.is_finished(c, w)]
      busy = [w for _, w in unfinished if w not in held]
      if busy:
        logging.warning("population %d/%d: %s held by another live launch; skipped here",
                        g + 1, len(plan), busy)
      if not todo:
        continue
      workdirs = [w for _, w in todo]
      logging.info("population %d/%d: %s", g + 1, len(plan), workdirs)
      train.train_population([c for c, _ in todo], workdirs,
                             checkpoint_dir=population_checkpoint_dir(root, workdirs))


@contextlib.contextmanager
def _hold_available(workdirs: list[str]):
  """The run folders of `workdirs` that this launch now holds (workdir_lock), the same
  list on every process of a multi-host launch: process 0 takes the locks and the
  others follow its answer."""
  with (workdir_lock.hold_available(workdirs) if files.is_writer()
        else contextlib.nullcontext(workdirs)) as held:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      mask = multihost_utils.broadcast_one_to_all(np.array([w in held for w in workdirs]))
      held = [w for w, m in zip(workdirs, mask) if m]
    yield held


def load_results(root: str, points) -> dict[str, dict[int, dict]]:
  """variant -> seed -> results.json of every finished point."""
  out: dict[str, dict[int, dict]] = {}
  for point in points:
    folder = point_dir(root, point)
    out.setdefault(variant_name(point), {})
    if os.path.exists(os.path.join(folder, "results.json")):
      out[variant_name(point)][int(point.get("config.seed", 0))] = (
          metric_writer.read_results(folder))
  return out


def write_tables(root: str, points, *, reference: str, metrics=tables.METRICS) -> str:
  md, table = tables.seed_tables(load_results(root, points), reference=reference,
                                 metrics=metrics)
  files.write_text(os.path.join(root, "sweep.md"), md)
  files.write_text(os.path.join(root, "sweep.csv"), table)
  return md


def define_flags(default_config: str | None = None) -> None:
  """The command line's flags; defined when the command runs, not at import, so this
  module can be imported beside main.py (which defines --config too)."""
  config_flags.DEFINE_config_file(
      "config", default_config, "Config file with get_hyper, optionally with ':arg'.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Root folder of the sweep.")
  flags.DEFINE_integer("shard", 0, "This process runs points shard, shard + n, ...")
  flags.DEFINE_integer("num_shards", 1, "Processes sharing the sweep.")
  flags.DEFINE_integer("max_population", 0,
                       "Most replicas trained in one vmapped population (0: no cap).")
  flags.DEFINE_bool("report_only", False, "Only tabulate finished points.")
  flags.DEFINE_bool("eval_only", False,
                    "Evaluate every finished population again from its checkpoint; no training.")
  flags.DEFINE_string("reference", "model_name=m2",
                      "The variant that paired differences are taken against.")
  flags.DEFINE_list("metrics", None, "Metrics to tabulate (default: tables.METRICS).")
  flags.mark_flags_as_required(["workdir"] if default_config else ["config", "workdir"])


@launch.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not 0 <= f.shard < f.num_shards:
    raise app.UsageError(f"--shard {f.shard} --num_shards {f.num_shards}: "
                         "expected 0 <= shard < num_shards.")
  points = load_points(f["config"].config_filename)
  if not f.report_only:
    from untapped_jax import compilation_cache  # pylint: disable=g-import-not-at-top
    from untapped_jax import host_memory  # pylint: disable=g-import-not-at-top
    host_memory.keep_freed_memory()  # before JAX starts its threads
    compilation_cache.enable()
    launch.initialize_distributed()
    run_points(f.config, points, f.workdir, shard=f.shard, num_shards=f.num_shards,
               max_population=f.max_population, eval_only=f.eval_only)
  print(write_tables(f.workdir, points, reference=f.reference,
                     metrics=tuple(f.metrics or tables.METRICS)))


def run():
  define_flags()
  app.run(main)


COMPARE_CONFIG = os.path.join("experiments", "configs", "poster.py") + ":sweep=compare"


def run_compare():
  """untapped-compare: this sweep over the poster config's `sweep=compare` points
  (M2 and Untapped over seeds; --config=experiments/configs/poster.py:sweep=compare,seeds=3
  for fewer seeds)."""
  define_flags(default_config=COMPARE_CONFIG)
  app.run(main)


if __name__ == "__main__":
  run()
