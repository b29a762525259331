"""Summary statistics over seeds."""

from __future__ import annotations

import numpy as np


def mean_and_interval(values) -> tuple[float, float]:
  """Mean and the half-width of its 95% Student-t interval (nan for one value)."""
  values = np.asarray(values, float)
  if len(values) < 2:
    return float(values.mean()), float("nan")
  sem = values.std(ddof=1) / np.sqrt(len(values))
  # Imported here: scipy.stats is ~0.6 s of every launch's start, needed only at its end.
  import scipy.stats  # pylint: disable=g-import-not-at-top
  return float(values.mean()), float(scipy.stats.t.ppf(0.975, len(values) - 1) * sem)
