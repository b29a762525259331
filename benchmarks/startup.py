r"""Where a short run's time goes outside its steps, and what the compilation cache saves.

  python benchmarks/startup.py [--config FILE[:ARG]] [--config.KEY=VALUE ...]
      [--workdir DIR] [--json]

Runs `untapped-train` three times as whole processes, each into a new run folder, with
one new cache folder ($UNTAPPED_CACHE_DIR, so the evaluators are trained on the first
run and loaded after):
  cold:  an empty compilation cache (every program compiles, and is written);
  warm:  the same command again (the programs are loaded from the cache);
  off:   UNTAPPED_COMPILATION_CACHE=off (every program compiles, nothing is kept).
and prints, from the outside clock and each run's timing.json: the whole process, the
start-up (package import to the first step: JAX, data, splits, parameters), the first step
(compilation included), the rest of training (steps, validations, checkpoints), and the
final evaluation. The default config is
the M2 benchmark's runlocal (seconds of training); figures only, nothing asserted.
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
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "experiments", "configs", "m2_benchmark.py:runlocal")
# Parsed here so that a bad config fails before three processes start.
_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "The run's config, as untapped-train takes it.",
    lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", "", "Scratch folder (default: a temporary one, "
                               "removed at the end).")
_JSON = flags.DEFINE_bool("json", False, "End with one JSON line of the figures.")
PHASES = ("cold", "warm", "off")
_PHASES = flags.DEFINE_list("phases", list(PHASES), "Which of cold, warm, off to run, in "
                            "that order ('warm' reads the cache that 'cold' wrote).")


def config_argv() -> list[str]:
  """The --config flag as given, plus every --config.KEY override, for the subprocess."""
  return [a for a in sys.argv[1:] if a.startswith("--config")] or [
      f"--config={DEFAULT_CONFIG}"]


def run_once(phase: str, scratch: str) -> dict[str, float]:
  env = dict(os.environ, UNTAPPED_CACHE_DIR=os.path.join(scratch, "cache"))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  if phase == "off":
    env["UNTAPPED_COMPILATION_CACHE"] = "off"
  else:
    env.pop("UNTAPPED_COMPILATION_CACHE", None)
  workdir = os.path.join(scratch, phase)
  cmd = [sys.executable, "-m", "untapped_jax", *config_argv(), f"--workdir={workdir}",
         "--config.train.progress_bar=False"]
  start = time.perf_counter()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"{phase}: untapped-train exited {proc.returncode}:\n"
                       f"{proc.stderr[-3000:]}")
  with open(os.path.join(workdir, "timing.json")) as f:
    timing = json.load(f)
  steps = timing["num_steps"]
  other = timing["train_wall_s"] - timing["first_step_s"]
  return {"process_s": wall, "startup_s": timing["startup_s"],
          "first_step_s": timing["first_step_s"], "other_steps_s": other,
          "ms_per_step": 1e3 * other / max(steps - 1, 1),
          "final_evaluation_s": timing["final_evaluation_s"],
          "outside_s": wall - timing["process_s"], "num_steps": steps}


def phases() -> list[str]:
  """The --phases asked for, in PHASES' order; a bad list is one line before any run."""
  asked = list(_PHASES.value)
  if not asked or any(p not in PHASES for p in asked) or ("warm" in asked
                                                         and "cold" not in asked):
    raise app.UsageError(f"--phases={','.join(asked)}; expected a non-empty subset of "
                         f"{','.join(PHASES)}, with cold wherever warm is.")
  return [p for p in PHASES if p in asked]


def main(argv):
  del argv
  chosen = phases()
  scratch = _WORKDIR.value or tempfile.mkdtemp(prefix="untapped_startup_")
  try:
    figures = {phase: run_once(phase, scratch) for phase in chosen}
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(scratch, ignore_errors=True)
  print(f"config: {' '.join(config_argv())}, {figures[chosen[0]]['num_steps']} steps")
  print("| compilation cache | process s | start-up s | first step s (compiles) "
        "| rest of training s (ms/step) | final evaluation s | interpreter start and exit s |")
  print("|---|---|---|---|---|---|---|")
  for phase, f in figures.items():
    print(f"| {phase} | {f['process_s']:.1f} | {f['startup_s']:.1f} | {f['first_step_s']:.1f} "
          f"| {f['other_steps_s']:.1f} ({f['ms_per_step']:.0f}) | {f['final_evaluation_s']:.1f} "
          f"| {f['outside_s']:.1f} |")
  if _JSON.value:
    print(json.dumps(figures))


if __name__ == "__main__":
  app.run(main)
