r"""A population of seeds in one process against the same seeds as separate runs, whole.

  python benchmarks/population_processes.py [--seeds 4] [--steps 300] [--pairs 3]
      [--config experiments/configs/m2_benchmark.py:labels=100] [--set train.eval_every=100]
      [--json]

What S seeds cost a researcher, start-up, data, compilation, validation, checkpoints and the
final evaluation included: one `untapped-train --config.num_seeds=S` (the population)
against S runs of `untapped-train --config.seed=s`, s = 0 .. S-1, one after another (the
separate runs), every run into a fresh workdir, the compilation cache as the runs leave it
(one untimed pair first warms it, as a sweep's later runs find it). --pairs pairs in turns,
population first. Per side: wall seconds, CPU seconds (user + system of its processes) and
the largest process's peak resident memory; then the paired ratios population / separate,
pair by pair, and their medians. `paired_steps.py --replicas` compares the steps alone.
Timings only; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from untapped_jax import host_memory

_SEEDS = flags.DEFINE_integer("seeds", 4, "Seeds S: the population's size, and the number of "
                              "separate runs.")
_STEPS = flags.DEFINE_integer("steps", 300, "train.num_steps of every run.")
_PAIRS = flags.DEFINE_integer("pairs", 3, "Timed pairs (population, separate runs), in turns.")
_WARMUP_PAIRS = flags.DEFINE_integer("warmup_pairs", 1, "Untimed pairs first.")
_CONFIG = flags.DEFINE_string("config", "experiments/configs/m2_benchmark.py:labels=100",
                              "The runs' --config (a config file and its argument).")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE: passed to every run as "
                                 "--config.KEY=VALUE (repeatable).")
_JSON = flags.DEFINE_bool("json", False, "Also print the figures as one JSON line.")
SIDES = ("population", "separate")
FIGURES = ("wall_s", "cpu_s", "peak_rss_mb")


def check_flags() -> None:
  """One ValueError naming the bad flag values, before anything runs."""
  bad = [f"--{name}={value}" for name, value, low in (
      ("seeds", _SEEDS.value, 2), ("steps", _STEPS.value, 1), ("pairs", _PAIRS.value, 1),
      ("warmup_pairs", _WARMUP_PAIRS.value, 0)) if value < low]
  if bad:
    raise ValueError(f"{' '.join(bad)}: expected --seeds of at least 2, --steps and --pairs of "
                     "at least 1, --warmup_pairs of 0 or more.")
  malformed = [s for s in _SET.value if "=" not in s or s.startswith("=")]
  if malformed:
    raise ValueError(f"--set={malformed[0]!r}: expected KEY=VALUE, e.g. train.eval_every=100.")


def train_command(workdir: str, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "untapped_jax", f"--config={_CONFIG.value}",
          f"--workdir={workdir}", f"--config.train.num_steps={_STEPS.value}",
          "--config.train.progress_bar=False", *overrides,
          *(f"--config.{s}" for s in _SET.value)]


def run_processes(commands: list[list[str]]) -> dict:
  """Runs the commands one after another: their wall seconds, summed CPU seconds and the
  largest peak RSS (os.wait4's rusage of each). Raises naming a command that failed."""
  wall, cpu, peak_mb = 0.0, 0.0, 0.0
  for cmd in commands:
    with tempfile.TemporaryFile() as err:
      start = time.perf_counter()
      proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
      _, status, usage = os.wait4(proc.pid, 0)
      wall += time.perf_counter() - start
      proc.returncode = os.waitstatus_to_exitcode(status)
      if proc.returncode:
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"population_processes: {' '.join(cmd)} exited with "
                           f"{proc.returncode}: {tail[0] if tail else '(no output)'}")
    cpu += usage.ru_utime + usage.ru_stime
    peak_mb = max(peak_mb, host_memory.rusage_peak_mb(usage))
  return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_mb,
          "processes": len(commands)}


def one_pair(root: str) -> dict:
  """{side: run_processes' figures}, each side into fresh workdirs under `root`."""
  shutil.rmtree(root, ignore_errors=True)
  population = [train_command(os.path.join(root, "population"),
                              f"--config.num_seeds={_SEEDS.value}")]
  separate = [train_command(os.path.join(root, f"seed_{s}"), f"--config.seed={s}")
              for s in range(_SEEDS.value)]
  figures = {"population": run_processes(population), "separate": run_processes(separate)}
  shutil.rmtree(root, ignore_errors=True)
  return figures


def summarise(pairs: list[dict]) -> dict:
  """Medians per side and of the paired ratios population / separate, per figure."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  median = lambda values: float(np.median(values))
  return {"medians": {side: {f: median([p[side][f] for p in pairs]) for f in FIGURES}
                      for side in SIDES},
          "paired_ratio": {f: median([p["population"][f] / p["separate"][f] for p in pairs])
                           for f in FIGURES},
          "pairs": pairs}


def main(argv):
  del argv
  try:
    check_flags()
  except ValueError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
  root = tempfile.mkdtemp(prefix="population_processes_")
  try:
    for _ in range(_WARMUP_PAIRS.value):
      one_pair(os.path.join(root, "warmup"))
    out = summarise([one_pair(os.path.join(root, f"pair_{i}")) for i in range(_PAIRS.value)])
  except RuntimeError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(f"{_SEEDS.value} seeds, {_STEPS.value} steps each, --config={_CONFIG.value}; "
        f"medians of {_PAIRS.value} pairs in turns")
  print("| | wall s | CPU s | peak RSS MB (largest process) |\n|---|---|---|---|")
  for side, label in zip(SIDES, ("one process, num_seeds=S", "S processes, one after another")):
    m = out["medians"][side]
    print(f"| {label} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {m['peak_rss_mb']:.0f} |")
  r = out["paired_ratio"]
  print(f"paired ratios, population / separate: wall {r['wall_s']:.3f}, CPU {r['cpu_s']:.3f}, "
        f"peak RSS {r['peak_rss_mb']:.3f}")
  if _JSON.value:
    print(json.dumps(dict(out, seeds=_SEEDS.value, steps=_STEPS.value, config=_CONFIG.value)))


if __name__ == "__main__":
  app.run(main)
