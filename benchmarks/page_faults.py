r"""The train step with and without host_memory.keep_freed_memory, process against process.

  python benchmarks/page_faults.py [--pairs 5] [--steps 30] [--warmup 20]
      [--unlabeled_batch 200] [--labeled_batch 1] [--replicas 2] [--json]

glibc's malloc settings hold for a whole process, so each figure comes from its own:
--pairs times, one process as the package's entry points run (keep_freed_memory) and
one with UNTAPPED_KEEP_HOST_MEMORY=off (glibc's defaults), in turns. Each builds the
package's M2 train step (throughput.py's synthetic batch, S replicas), compiles it,
takes --warmup untimed steps and then --steps timed ones, and reports per step: wall ms, user
and system CPU ms, minor page faults, and the process's peak resident memory. The
parent prints the medians and the paired ratio of wall time, kept / defaults, pair by
pair. Timings only; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

from untapped_jax import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position

_PAIRS = flags.DEFINE_integer("pairs", 5, "Pairs of processes (kept, defaults), in turns.")
_REPLICAS = flags.DEFINE_integer("replicas", 1, "Replicas S of the step.")
_WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed steps after compilation.")
_CHILD = flags.DEFINE_bool("child", False, "Internal: measure in this process, print JSON.")
# --unlabeled_batch, --labeled_batch, --steps, --tiny and --json are throughput.py's flags.
_UNLABELED, _LABELED, _STEPS, _TINY, _JSON = (
    throughput._UNLABELED, throughput._LABELED, throughput._STEPS,  # pylint: disable=protected-access
    throughput._TINY, throughput._JSON)  # pylint: disable=protected-access
SETTINGS = ("kept", "defaults")


def measure_here() -> dict:
  """This process's figures per step of the package's train step (see the module doc)."""
  kept = host_memory.keep_freed_memory()  # first, as the entry points do
  import jax  # pylint: disable=g-import-not-at-top
  _, step, (state, *inputs) = throughput.step_and_inputs(
      "m2", _REPLICAS.value, unlabeled_batch=_UNLABELED.value, labeled_batch=_LABELED.value,
      tiny=_TINY.value)
  temp_bytes = step.lower(state, *inputs).compile().memory_analysis().temp_size_in_bytes
  for _ in range(_WARMUP.value):
    state, metrics = step(state, *inputs)
  jax.block_until_ready(metrics)
  before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = step(state, *inputs)
  jax.block_until_ready(metrics)
  wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
  per_step = lambda a, b: (a - b) / _STEPS.value
  return {"kept": kept, "ms": 1e3 * wall / _STEPS.value,
          "user_ms": 1e3 * per_step(after.ru_utime, before.ru_utime),
          "system_ms": 1e3 * per_step(after.ru_stime, before.ru_stime),
          "minor_faults": per_step(after.ru_minflt, before.ru_minflt),
          "peak_rss_mb": host_memory.rusage_peak_mb(after), "temp_mb": temp_bytes / 2**20}


def run_child(setting: str) -> dict:
  env = dict(os.environ)
  env.pop(host_memory.ENV_VAR, None)
  if setting == "defaults":
    env[host_memory.ENV_VAR] = "off"
  cmd = [sys.executable, os.path.abspath(__file__), "--child",
         f"--unlabeled_batch={_UNLABELED.value}", f"--labeled_batch={_LABELED.value}",
         f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}", f"--replicas={_REPLICAS.value}",
         f"--tiny={_TINY.value}"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"page_faults: the {setting} process failed:\n{proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(measure_here()))
    return
  if _PAIRS.value < 1 or _STEPS.value < 1 or _REPLICAS.value < 1 or _WARMUP.value < 0:
    print(f"page_faults: --pairs={_PAIRS.value} --steps={_STEPS.value} "
          f"--replicas={_REPLICAS.value} --warmup={_WARMUP.value}: expected positive "
          "integers (--warmup: zero or more).", file=sys.stderr)
    sys.exit(2)
  import numpy as np  # pylint: disable=g-import-not-at-top
  runs = {setting: [] for setting in SETTINGS}
  for _ in range(_PAIRS.value):
    for setting in SETTINGS:
      runs[setting].append(run_child(setting))
  median = lambda setting, key: float(np.median([r[key] for r in runs[setting]]))
  keys = ("ms", "user_ms", "system_ms", "minor_faults", "peak_rss_mb")
  out = {"replicas": _REPLICAS.value, "unlabeled_batch": _UNLABELED.value,
         "labeled_batch": _LABELED.value, "steps": _STEPS.value, "warmup": _WARMUP.value,
         "temp_mb": runs["kept"][0]["temp_mb"],
         "kept_took_effect": all(r["kept"] for r in runs["kept"]),
         "medians": {s: {k: median(s, k) for k in keys} for s in SETTINGS},
         "paired_ms_ratio": float(np.median([a["ms"] / b["ms"] for a, b in zip(
             runs["kept"], runs["defaults"])])),
         "runs": runs}
  print(f"M2 step, {_REPLICAS.value} replica(s), {out['temp_mb']:.1f} MB of temporary "
        f"buffer; medians of {_PAIRS.value} processes each, {_STEPS.value} steps each after "
        f"{_WARMUP.value} untimed")
  print("| glibc malloc | ms / step | user ms | system ms | minor page faults | "
        "peak RSS MB |\n|---|---|---|---|---|---|")
  for s in SETTINGS:
    m = out["medians"][s]
    print(f"| {s} | {m['ms']:.1f} | {m['user_ms']:.1f} | {m['system_ms']:.1f} | "
          f"{m['minor_faults']:.0f} | {m['peak_rss_mb']:.0f} |")
  print(f"paired ratio of ms per step, kept / defaults: {out['paired_ms_ratio']:.3f}")
  if _JSON.value:
    print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
