"""stats.mean_and_interval against scipy's t-interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from untapped_jax import stats


def t_half_width(values):
  values = np.asarray(values, float)
  if np.all(values == values[0]):
    return 0.0
  lo, hi = scipy.stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                  scale=scipy.stats.sem(values))
  return (hi - lo) / 2


@pytest.mark.parametrize("values", [[0.5, 0.7, 0.65, 0.9], [1.0, 3.0],
                                    [0.91, 0.93, 0.92, 0.95, 0.90, 0.94, 0.96]])
def test_mean_and_interval_matches_scipy(values):
  mean, half = stats.mean_and_interval(values)
  assert mean == pytest.approx(np.mean(values), rel=1e-12)
  assert half == pytest.approx(t_half_width(values), rel=1e-9)
  assert half > 0


def test_mean_and_interval_edge_cases():
  mean, half = stats.mean_and_interval([0.7])
  assert mean == pytest.approx(0.7) and math.isnan(half)
  mean, half = stats.mean_and_interval([4, 4, 4])
  assert mean == 4.0 and half == 0.0
  # Two values: t(0.975, 1) = 12.706..., sem = |a - b| / 2.
  _, half = stats.mean_and_interval([0.0, 2.0])
  assert half == pytest.approx(12.7062047, rel=1e-6)
