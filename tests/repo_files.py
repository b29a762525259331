"""The repository's files that tests load as modules: the experiment configs and scripts."""

import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "experiments" / "configs"
POSTER = CONFIG_DIR / "poster.py"


def load_module(path: pathlib.Path, name: str | None = None):
  """The Python file at `path` (a config or a script outside the package), imported."""
  spec = importlib.util.spec_from_file_location(name or f"repo_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up by name
  spec.loader.exec_module(module)
  return module
