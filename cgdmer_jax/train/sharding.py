"""The device mesh, the shardings of state and batch, and global batch assembly.

One mesh with axes ('data', 'fsdp'). The batch is split over both axes (every device holds
different examples: pure data parallelism when fsdp=1). With fsdp > 1, large parameters and
their optimizer moments are additionally split over 'fsdp' along their largest divisible
dimension (ZeRO-3 style); XLA inserts the all-gathers in the forward pass and the
reduce-scatters of the gradients.
"""

from __future__ import annotations

from typing import Any
from typing import Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXES = ("data", "fsdp")
# Parameters smaller than this stay replicated under fsdp: sharding them saves little
# memory and costs a collective each.
FSDP_MIN_SIZE = 2 ** 16


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """The ('data', 'fsdp') mesh over `devices` (default: all devices of all processes).

  Args:
    config: full config; reads `mesh.data` and `mesh.fsdp` (-1 in one of them takes the
      devices left over).
    devices: optional explicit device list (tests use subsets).

  Returns:
    A `jax.sharding.Mesh` with Auto axis types (sharding propagated by XLA).

  Raises:
    ValueError: if the axis sizes do not multiply to the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  data, fsdp = int(config.mesh.data), int(config.mesh.fsdp)
  if data == -1 and fsdp == -1:
    raise ValueError("mesh.data and mesh.fsdp cannot both be -1")
  if data == -1:
    if n % fsdp:
      raise ValueError(f"mesh.fsdp={fsdp} does not divide the {n} devices")
    data = n // fsdp
  if fsdp == -1:
    if n % data:
      raise ValueError(f"mesh.data={data} does not divide the {n} devices")
    fsdp = n // data
  if data * fsdp != n or data < 1 or fsdp < 1:
    raise ValueError(f"mesh.data * mesh.fsdp = {data} * {fsdp} must equal the device count {n}")
  return jax.make_mesh((data, fsdp), DATA_AXES, axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension over every device."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Shards the largest dimension divisible by `fsdp` over 'fsdp'; small arrays replicated."""
  if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
  """NamedShardings for a pytree of arrays (params, optimizer state) on `mesh`."""
  fsdp = mesh.shape["fsdp"]
  def one(x):
    shape = tuple(getattr(x, "shape", ()))
    return NamedSharding(mesh, param_spec(shape, fsdp))
  return jax.tree.map(one, abstract_state)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh
                 ) -> dict[str, jax.Array]:
  """Assembles each process's numpy batch into global jax.Arrays sharded on the batch axis.

  Non-numeric fields (e.g. record ids) are dropped: they never go to the device.
  """
  sharding = batch_sharding(mesh)
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    if v.dtype.kind not in "biuf":
      continue
    out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out
