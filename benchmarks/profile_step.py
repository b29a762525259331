r"""Where a train step's time goes: jax.profiler over 10 steps, the XLA ops by time.

  python benchmarks/profile_step.py [--model m2] [--unlabeled_batch 200] [--top 25]
      [--compute_dtype bfloat16] [--matmul_precision BF16_BF16_F32] [--xla_cpu_ynnpack]

The same step and synthetic batch as throughput.py; the trace is written as a
Perfetto JSON under --trace_dir (open it in ui.perfetto.dev) and summed per op name.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import sys
import tempfile

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

from untapped_jax import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position
from untapped_jax import objective  # pylint: disable=g-import-not-at-top,wrong-import-position
from untapped_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from untapped_jax import train_state  # pylint: disable=g-import-not-at-top,wrong-import-position

_MODEL = flags.DEFINE_string("model", "m2", "m2 | untapped")
_UNLABELED = throughput._UNLABELED  # pylint: disable=protected-access  (--unlabeled_batch)
_TOP = flags.DEFINE_integer("top", 25, "Ops to list.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "", "Trace folder (default: a temporary one).")
_DTYPE = throughput._DTYPE  # pylint: disable=protected-access  (--compute_dtype)
_PRECISION = throughput._PRECISION  # pylint: disable=protected-access  (--matmul_precision)
_YNNPACK = flags.DEFINE_bool("xla_cpu_ynnpack", False, "train.xla_cpu_ynnpack: compile the "
                             "step with XLA:CPU's YNNPACK fusions (the package's CPU default: "
                             "without).")
STEPS = 10


def main(argv):
  del argv
  host_memory.keep_freed_memory()  # as the package's entry points, before JAX's threads
  config = throughput.bench_config(_MODEL.value, unlabeled_batch=_UNLABELED.value, tiny=False,
                                   compute_dtype=_DTYPE.value,
                                   xla_cpu_ynnpack=_YNNPACK.value,
                                   matmul_precision=_PRECISION.value)
  graphdef, tx, state = train_state.create_train_state(config, seed=0)
  state = train_state.stack([state])
  numbers = jax.device_put(train_state.stack([objective.loss_numbers(
      config, pixel_probs=np.full(config.model.num_pixels, 0.2, np.float32), num_labeled=100,
      num_unlabeled=50000, num_label_only=50000)]))
  images = jax.device_put(np.random.default_rng(1).integers(
      0, 256, (5000, config.model.num_pixels), dtype=np.uint8))
  batch = jax.device_put(throughput.synthetic_batch(config, 1, len(images)))
  step = train.make_train_step(config, graphdef, tx)
  for _ in range(3):
    state, metrics = step(state, batch, numbers, images)
  jax.block_until_ready(metrics)
  trace_dir = _TRACE_DIR.value or tempfile.mkdtemp(prefix="untapped_profile_")
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  for _ in range(STEPS):
    state, metrics = step(state, batch, numbers, images)
  jax.block_until_ready(metrics)
  jax.profiler.stop_trace()
  path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
  events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    # XLA's ops; the executor's and Python's own spans are containers, not work.
    if e.get("ph") == "X" and not e["name"].startswith(("ThunkExecutor", "$", "Pjit",
                                                        "SlinkyThreadPool")):
      total[e["name"]] += e.get("dur", 0)
      count[e["name"]] += 1
  step_ms = sum(total.values()) / STEPS / 1e3
  print(f"{_MODEL.value}, {config.data.labeled_batch_size} labeled + {_UNLABELED.value} "
        f"unlabeled: {step_ms:.1f} ms of XLA ops per step (trace: {path})")
  print("| ms / step | share | op |\n|---|---|---|")
  for name, dur in total.most_common(_TOP.value):
    print(f"| {dur / STEPS / 1e3:.2f} | {dur / STEPS / 1e3 / step_ms:.0%} | {name} |")


if __name__ == "__main__":
  app.run(main)
