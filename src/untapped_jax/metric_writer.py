"""A run folder's metrics: config.json, metrics.jsonl, timings.jsonl and TensorBoard events.

TensorBoard events go through tensorboardX, a maintained writer that needs neither
TensorFlow nor PyTorch (clu's writers need TensorFlow for TensorBoard); it has
`purge_step`, which hides the events a killed run logged past its last checkpoint.
metrics.jsonl stays the record the tables and reports read: after a resume from step
t, lines past t are dropped before new ones are written, so no step appears twice.
Wall-clock times go to timings.jsonl (and timing.json), never to metrics.jsonl or
results.json: those two hold only what the config and seed decide, so a run killed
and resumed ends with the same bytes as one that never stopped.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from untapped_jax import files

METRICS_FILE = "metrics.jsonl"
TIMINGS_FILE = "timings.jsonl"
TIMING_FILE = "timing.json"
TENSORBOARD_DIR = "tensorboard"


def _import_tensorboardx():
  """tensorboardX, without the PyTorch import it attempts at its own import.

  tensorboardX's writer imports torch when it is installed, only to accept torch tensors
  (about 2 s of every run's start-up where torch is installed, as it is beside the
  benchmarks); we hand it NumPy. Marking torch absent for that one import makes its
  `import torch` fail as on a machine without it; a torch imported earlier is left be.
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return tensorboardX


class MetricWriter:
  """Writes one run's metrics; `resume_step` is the step its training restarts from.

  `wall_s_before` is the training wall time logged up to `resume_step` by earlier,
  interrupted attempts (0 for a fresh run), so wall times add up over resumes.
  """

  def __init__(self, workdir: str, *, config: dict[str, Any], resume_step: int = 0,
               tensorboard: bool = True):
    self.workdir = workdir
    self.metrics_path = os.path.join(workdir, METRICS_FILE)
    self.timings_path = os.path.join(workdir, TIMINGS_FILE)
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, "config.json"), config)
    _truncate(self.metrics_path, resume_step)
    kept = _truncate(self.timings_path, resume_step)
    self.wall_s_before = kept[-1]["wall_s"] if kept else 0.0
    self._tensorboard = None
    if tensorboard and files.is_writer():
      tensorboardX = _import_tensorboardx()
      self._tensorboard = tensorboardX.SummaryWriter(
          os.path.join(workdir, TENSORBOARD_DIR), purge_step=resume_step + 1,
          flush_secs=30, filename_suffix=f".resume{resume_step}.pid{os.getpid()}")
      # (The suffix keeps a restart within the same second from overwriting the file.)

  def write_scalars(self, step: int, record: dict[str, Any], *, wall_s: float) -> None:
    """Appends {'step': step, **record} to metrics.jsonl and {'step', 'wall_s'} (training
    seconds, over all attempts) to timings.jsonl, each rewritten through a temporary
    file so a kill never leaves half a line; the numbers also go to TensorBoard."""
    _append_line(self.timings_path, {"step": step, "wall_s": self.wall_s_before + wall_s})
    _append_line(self.metrics_path, {"step": step, **record})
    if self._tensorboard is not None:
      for name, value in record.items():
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
          self._tensorboard.add_scalar(name, float(value), step)

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: [H, W] floats in [0, 1] (TensorBoard only)."""
    if self._tensorboard is not None:
      self._tensorboard.add_image(name, np.clip(image, 0, 1)[None], step, dataformats="CHW")

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def _truncate(path: str, step: int) -> list[dict[str, Any]]:
  """Drops the lines of `path` logged after `step`; returns the lines kept."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    parsed = [(line, json.loads(line)) for line in f if line.strip()]
  kept = [(line, record) for line, record in parsed if record["step"] <= step]
  files.write_text(path, "".join(line for line, _ in kept))  # the kept lines' bytes unchanged
  return [record for _, record in kept]


def _append_line(path: str, record: dict[str, Any]) -> None:
  old = open(path).read() if os.path.exists(path) else ""
  files.write_text(path, old + json.dumps(record) + "\n")


def read_results(folder: str) -> dict[str, Any]:
  """results.json of a run folder, with train_wall_s from its timing.json when present."""
  with open(os.path.join(folder, "results.json")) as f:
    results = json.load(f)
  timing = os.path.join(folder, TIMING_FILE)
  if os.path.exists(timing):
    with open(timing) as f:
      results["train_wall_s"] = json.load(f)["train_wall_s"]
  return results


def tile_samples(x: np.ndarray, *, side: int = 28, gap: int = 0) -> np.ndarray:
  """[K, M, side*side] images -> one [K*(side+gap), M*(side+gap)] grid, row k from y
  dimension k; each image followed by `gap` NaN rows and columns (drawn as background)."""
  k, m, _ = x.shape
  cell = side + gap
  cells = x.reshape(k, m, side, side)
  if gap:
    cells = np.pad(cells.astype(np.float32), ((0, 0), (0, 0), (0, gap), (0, gap)),
                   constant_values=np.nan)
  return cells.transpose(0, 2, 1, 3).reshape(k * cell, m * cell)
