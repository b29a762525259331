"""Command line: untapped-train --config FILE[:ARG] --workdir DIR [--config.key=value]
[--eval_only] [--debug]."""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from untapped_jax import compilation_cache
from untapped_jax import host_memory
from untapped_jax import launch
from untapped_jax import train

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Config file, optionally with ':arg'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, results and checkpoints.")
_EVAL_ONLY = flags.DEFINE_bool(
    "eval_only", False, "Evaluate the workdir's last checkpoint again; do not train.")
flags.mark_flags_as_required(["workdir"])


@launch.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  host_memory.keep_freed_memory()  # before JAX starts its threads
  compilation_cache.enable()
  launch.initialize_distributed()
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, eval_only=_EVAL_ONLY.value)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
