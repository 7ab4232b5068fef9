"""Device mesh and placement. Today: data parallelism over every device of every process (axis "data"),
parameters replicated; the batch is split over "data"."""

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def make_mesh():
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharding(mesh):
  return NamedSharding(mesh, P("data"))


def global_batch(mesh, local_batch):
  """This process's numpy batch -> global jax.Arrays split over the "data" axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
