r"""How far the bfloat16 compute policy moves the bounds and the accuracy, against float32.

  python benchmarks/precision.py --workdir /tmp/precision [--steps 2000] \
      [--config experiments/configs/m2_benchmark.py:labels=3000] [--config.KEY=VALUE ...]

Trains the config (default: M2 on 3,000 labels) for --steps twice, once computing in
float32 and once in bfloat16 (model.compute_dtype; parameters and optimizer float32 in
both), each in its own run folder under --workdir. Prints, as a table and one JSON line:
the test accuracy and bounds of each run, and the float32 run's parameters evaluated
again with bfloat16 layers (the same parameters, only the arithmetic changed), with the
differences in nats and points of accuracy. Needs real MNIST ($UNTAPPED_DATA_DIR).
"""

from __future__ import annotations

import json
import os
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

KEYS = ("accuracy", "labeled_elbo", "unlabeled_bound")


def run_config(dtype: str):
  c = _CONFIG.value.copy_and_resolve_references()
  c.train.num_steps = _STEPS.value
  c.train.eval_every = _STEPS.value
  c.train.log_every = min(c.train.log_every, _STEPS.value)
  c.train.checkpoint_every = 0
  c.train.select_by = "final"
  c.train.progress_bar = False
  c.model.compute_dtype = dtype
  return c


def main(argv):
  del argv
  runs, seconds = {}, {}
  for dtype in ("float32", "bfloat16"):
    start = time.time()
    runs[dtype] = train.train_and_evaluate(run_config(dtype), os.path.join(_WORKDIR.value, dtype))
    seconds[dtype] = time.time() - start
  # The float32 run's parameters, evaluated with float32 and with bfloat16 layers.
  graphdef, params, config = saved_state.load_run_params(os.path.join(_WORKDIR.value,
                                                                      "float32"))
  test = splits_lib.make_splits(mnist.load(config.data), config.data, seed=config.seed).test
  config.model.compute_dtype = "bfloat16"
  graphdef16, _ = nnx.split(models.build(config.model, seed=config.seed))
  same_params = {name: heldout.evaluate(g, params, test, batch_size=config.train.eval_batch_size,
                                        binarization=config.data.binarization,
                                        seed=config.seed)
                 for name, g in (("float32", graphdef), ("bfloat16", graphdef16))}
  rows = ["| | test accuracy | test labeled ELBO (nats) | test unlabeled bound (nats) | "
          "wall s |", "|---|---|---|---|---|"]
  for dtype, r in runs.items():
    rows.append(f"| trained in {dtype} | {r['test_accuracy']:.4f} | "
                f"{r['test_labeled_elbo']:.3f} | {r['test_unlabeled_bound']:.3f} | "
                f"{seconds[dtype]:.0f} |")
  for name, r in same_params.items():
    rows.append(f"| float32 run's parameters, {name} layers | {r['accuracy']:.4f} | "
                f"{r['labeled_elbo']:.3f} | {r['unlabeled_bound']:.3f} | |")
  print("\n".join(rows))
  print(json.dumps({
      "steps": _STEPS.value, "config": flags.FLAGS["config"].config_filename,
      "trained": {d: {k: runs[d][f"test_{k}"] for k in KEYS} for d in runs},
      "same_params": same_params,
      "same_params_bfloat16_minus_float32": {
          k: same_params["bfloat16"][k] - same_params["float32"][k] for k in KEYS},
      "trained_bfloat16_minus_float32": {
          k: runs["bfloat16"][f"test_{k}"] - runs["float32"][f"test_{k}"] for k in KEYS},
      "wall_s": seconds}))


if __name__ == "__main__":
  app.run(main)
