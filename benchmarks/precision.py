r"""How far the reduced-precision policies move the bounds and the accuracy, against float32.

  python benchmarks/precision.py --workdir /tmp/precision [--steps 2000] \
      [--policies bfloat16,bfloat16_matmuls] \
      [--config experiments/configs/m2_benchmark.py:labels=3000] [--config.KEY=VALUE ...]

Trains the config (default: M2 on 3,000 labels) for --steps in float32 and under each
policy (parameters and optimizer float32 in all), each in its own run folder under
--workdir: `bfloat16` computes every layer in bfloat16 (model.compute_dtype),
`bfloat16_matmuls` only the matmuls' products (model.matmul_precision='BF16_BF16_F32').
Prints, as a table and one JSON line: the test accuracy and bounds of each run, and the
float32 run's parameters evaluated again under each policy (the same parameters, only
the arithmetic changed), with the differences in nats and points of accuracy. Needs
real MNIST ($UNTAPPED_DATA_DIR).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags
from flax import nnx
from ml_collections import config_flags

from untapped_jax import models
from untapped_jax import saved_state
from untapped_jax import train
from untapped_jax.data import mnist
from untapped_jax.data import splits as splits_lib
from untapped_jax.evaluate import heldout

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the two runs.", required=True)
_STEPS = flags.DEFINE_integer("steps", 2000, "Training steps of each run.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments", "configs", "m2_benchmark.py") + ":labels=3000",
    "The config both runs train (FILE[:ARG]).")

_POLICIES = flags.DEFINE_list("policies", ["bfloat16", "bfloat16_matmuls"],
                              "The policies compared with float32.")

KEYS = ("accuracy", "labeled_elbo", "unlabeled_bound")
# name: the model settings of each policy
POLICIES = {"float32": {},
            "bfloat16": {"compute_dtype": "bfloat16"},
            "bfloat16_matmuls": {"matmul_precision": "BF16_BF16_F32"}}


def run_config(policy: str):
  c = _CONFIG.value.copy_and_resolve_references()
  c.train.num_steps = _STEPS.value
  c.train.eval_every = _STEPS.value
  c.train.log_every = min(c.train.log_every, _STEPS.value)
  c.train.checkpoint_every = 0
  c.train.select_by = "final"
  c.train.progress_bar = False
  c.model.update(POLICIES[policy])
  return c


def main(argv):
  del argv
  choices = [p for p in POLICIES if p != "float32"]
  if not _POLICIES.value or set(_POLICIES.value) - set(choices):
    print(f"precision: --policies={','.join(_POLICIES.value)}; expected some of {choices}.",
          file=sys.stderr)
    sys.exit(2)
  policies = ["float32", *_POLICIES.value]
  runs, seconds = {}, {}
  for policy in policies:
    start = time.time()
    runs[policy] = train.train_and_evaluate(run_config(policy),
                                            os.path.join(_WORKDIR.value, policy))
    seconds[policy] = time.time() - start
  # The float32 run's parameters, evaluated under each policy.
  _, params, config = saved_state.load_run_params(os.path.join(_WORKDIR.value,
                                                                      "float32"))
  test = splits_lib.make_splits(mnist.load(config.data), config.data, seed=config.seed).test
  same_params = {}
  for policy in policies:
    model_config = config.model.copy_and_resolve_references()
    model_config.update(POLICIES[policy])
    graphdef_p, _ = nnx.split(models.build(model_config, seed=config.seed))
    same_params[policy] = heldout.evaluate(
        graphdef_p, params, test, batch_size=config.train.eval_batch_size,
        binarization=config.data.binarization, seed=config.seed)
  rows = ["| | test accuracy | test labeled ELBO (nats) | test unlabeled bound (nats) | "
          "wall s |", "|---|---|---|---|---|"]
  for policy, r in runs.items():
    rows.append(f"| trained in {policy} | {r['test_accuracy']:.4f} | "
                f"{r['test_labeled_elbo']:.3f} | {r['test_unlabeled_bound']:.3f} | "
                f"{seconds[policy]:.0f} |")
  for policy, r in same_params.items():
    rows.append(f"| float32 run's parameters, {policy} layers | {r['accuracy']:.4f} | "
                f"{r['labeled_elbo']:.3f} | {r['unlabeled_bound']:.3f} | |")
  print("\n".join(rows))
  print(json.dumps({
      "steps": _STEPS.value, "config": os.path.relpath(flags.FLAGS["config"].config_filename),
      "trained": {p: {k: runs[p][f"test_{k}"] for k in KEYS} for p in runs},
      "same_params": same_params,
      "same_params_minus_float32": {
          p: {k: same_params[p][k] - same_params["float32"][k] for k in KEYS}
          for p in _POLICIES.value},
      "trained_minus_float32": {
          p: {k: runs[p][f"test_{k}"] - runs["float32"][f"test_{k}"] for k in KEYS}
          for p in _POLICIES.value},
      "wall_s": seconds}))


if __name__ == "__main__":
  app.run(main)
