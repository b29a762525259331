"""A run folder's metrics: config.json, metrics.jsonl and TensorBoard event files.

TensorBoard events go through tensorboardX, a maintained writer that needs neither
TensorFlow nor PyTorch (clu's writers need TensorFlow for TensorBoard); it has
`purge_step`, which hides the events a killed run logged past its last checkpoint.
metrics.jsonl stays the record the tables and reports read: after a resume from step
t, lines past t are dropped before new ones are written, so no step appears twice.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from untapped_jax import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
  """Writes one run's metrics; `resume_step` is the step its training restarts from."""

  def __init__(self, workdir: str, *, config: dict[str, Any], resume_step: int = 0,
               tensorboard: bool = True):
    self.workdir = workdir
    self.metrics_path = os.path.join(workdir, METRICS_FILE)
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, "config.json"), config)
    self._truncate(resume_step)
    self._tensorboard = None
    if tensorboard and files.is_writer():
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tensorboard = tensorboardX.SummaryWriter(
          os.path.join(workdir, TENSORBOARD_DIR), purge_step=resume_step + 1,
          flush_secs=30, filename_suffix=f".resume{resume_step}.pid{os.getpid()}")
      # (The suffix keeps a restart within the same second from overwriting the file.)

  def _truncate(self, step: int) -> None:
    if not os.path.exists(self.metrics_path):
      return
    with open(self.metrics_path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    files.write_text(self.metrics_path, "".join(kept))

  def write_scalars(self, step: int, record: dict[str, Any]) -> None:
    """Appends {'step': step, **record} to metrics.jsonl (rewritten through a temporary
    file, so a kill never leaves half a line) and its numbers to TensorBoard."""
    line = json.dumps({"step": step, **record}) + "\n"
    old = open(self.metrics_path).read() if os.path.exists(self.metrics_path) else ""
    files.write_text(self.metrics_path, old + line)
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


def tile_samples(x: np.ndarray, *, side: int = 28) -> np.ndarray:
  """[K, M, side*side] images -> one [K*side, M*side] grid, row k from y dimension k."""
  k, m, _ = x.shape
  return x.reshape(k, m, side, side).transpose(0, 2, 1, 3).reshape(k * side, m * side)
