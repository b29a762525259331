"""Populations on several devices: the same numbers as on one (2 CPU devices forced)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest



# Trains a population of one (data parallel on 2 devices) and of two (one replica per
# device) and prints their losses, test figures and parameter checksums.
SCRIPT = r'''
import json, sys
import jax
import numpy as np
sys.path.insert(0, sys.argv[2])
import population_test
from untapped_jax import train
out = {"devices": jax.device_count()}
for name, seeds in (("one", [0]), ("two", [1, 2])):
  configs = [population_test.tiny_config(seed=s, model_name="untapped") for s in seeds]
  root = f"{sys.argv[1]}/{name}"
  population = train.train_population(configs, [f"{root}/{s}" for s in seeds],
                                      checkpoint_dir=f"{root}/checkpoints")
  out[name] = {
      "test": [[r["test_accuracy"], r["test_unlabeled_bound"]] for r in population.results],
      "losses": [[json.loads(l)["train/loss"] for l in open(f"{root}/{s}/metrics.jsonl")]
                 for s in seeds],
      "params": [float(np.sum(np.abs(leaf))) for leaf in
                 jax.tree.leaves(jax.device_get(population.state.params))],
      "sharding": str(jax.tree.leaves(population.state.params)[0].sharding)}
print(json.dumps(out))
'''


def start_on(num_devices: int, workdir) -> subprocess.Popen:
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                                    f"--xla_force_host_platform_device_count={num_devices}")
  return subprocess.Popen([sys.executable, "-c", SCRIPT, str(workdir),
                           os.path.dirname(__file__)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def result_of(process: subprocess.Popen) -> dict:
  stdout, stderr = process.communicate(timeout=900)
  assert process.returncode == 0, stderr[-3000:]
  return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_devices_give_the_losses_of_one(tmp_path):
  # Both at once, in their own folders: the two cores share their start-ups.
  processes = start_on(1, tmp_path / "d1"), start_on(2, tmp_path / "d2")
  one, two = map(result_of, processes)
  assert one["devices"] == 1 and two["devices"] == 2
  # The population of two is split one replica per device; the population of one
  # is copied to both devices, its batches split between them.
  assert "spec=P('devices'" in two["two"]["sharding"]
  assert "spec=P()" in two["one"]["sharding"]
  for name in ("one", "two"):
    np.testing.assert_allclose(two[name]["losses"], one[name]["losses"], rtol=1e-4)
    np.testing.assert_allclose(two[name]["test"], one[name]["test"], rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(two[name]["params"], one[name]["params"], rtol=1e-4)
