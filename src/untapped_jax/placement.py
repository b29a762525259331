"""Where a population's arrays live: jax.sharding over the local devices of every
process, and the way back to host NumPy (also across processes)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np


def fetch(tree):
  """jax.device_get that also reads arrays spread over several processes' devices (a
  multi-host population split by replica): every process gets the whole value."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a population's arrays live on the local devices (one mesh axis 'devices').

  With S replicas on n > 1 devices: if n divides S, each device holds S / n
  replicas (state, loss numbers and batches split on the replica axis); otherwise
  the replicas are copied to every device and each batch is split on its example
  axis (data parallel; a stream whose batch n does not divide stays whole). The
  images are copied to every device. One device: nothing is split.
  """
  mesh: jax.sharding.Mesh | None
  by_replica: bool

  @classmethod
  def for_population(cls, num_replicas: int) -> "Placement":
    devices = jax.devices()
    if len(devices) == 1:
      return cls(mesh=None, by_replica=False)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("devices",))
    return cls(mesh=mesh, by_replica=num_replicas % len(devices) == 0)

  def _put(self, tree, spec_of):
    if self.mesh is None:
      return jax.device_put(tree)

    def put(a):
      if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # typed keys: their data
        return jax.random.wrap_key_data(put(jax.random.key_data(a)),
                                        impl=jax.random.key_impl(a))
      # Every process holds the whole host array (each computes the same batches) and
      # hands over the shards of its own devices: the multi-process way to build a
      # global array, and the same as device_put on one process.
      a = np.asarray(a)
      sharding = jax.sharding.NamedSharding(self.mesh, spec_of(a))
      return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])
    return jax.tree.map(put, tree)

  def replicated(self, tree):
    return self._put(tree, lambda a: jax.sharding.PartitionSpec())

  def per_replica(self, tree):
    """State and loss numbers: leading replica axis."""
    P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
    return self._put(tree, lambda a: P("devices") if self.by_replica else P())

  def batch(self, tree):
    """[S, B, ...] batches: split on S, or on B where the devices divide it."""
    P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
    n = 1 if self.mesh is None else self.mesh.size
    return self._put(tree, lambda a: P("devices") if self.by_replica else (
        P(None, "devices") if a.shape[1] % n == 0 else P()))
