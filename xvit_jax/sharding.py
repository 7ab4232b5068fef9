"""The device mesh, and where every array lives on it.

Mesh axes (`config.mesh`, sizes; -1 takes the devices left over):
  data    pure data parallelism: the batch is split, parameters are replicated
  fsdp    the batch is split too, and parameters and optimizer state are sharded (ZeRO-3 style: XLA
          gathers each weight where it is used)
  tensor  Megatron-style: attention heads and MLP hidden units are split, the batch is not

Parameters and optimizer state are placed by RULES: the first pattern found in a parameter's path
("blocks/3/attn/qkv/kernel") gives one mesh axis (or None) per dimension. An axis that does not divide its
dimension is dropped (that dimension is replicated), so any model fits any mesh.
"""

import re

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from xvit_jax import fields, trees
from xvit_jax.errors import UserError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

FSDP_MIN_SIZE = 2 ** 14  # smaller arrays (biases, norms, tokens) stay replicated

RULES = (
    # Attention: whole heads of q, k and v (the kernel is (C, 3, H, D)) and the output projection's rows
    # (head-major) split over "tensor": each device attends with its own heads, no communication.
    (r"attn/qkv/kernel$", ("fsdp", None, "tensor", None)),
    (r"attn/qkv/bias$", (None, "tensor", None)),
    (r"attn/proj/kernel$", ("tensor", "fsdp")),
    # MLP: hidden units split over "tensor" (fc1 columns, fc2 rows).
    (r"mlp/fc1/kernel$", ("fsdp", "tensor")),
    (r"mlp/fc1/bias$", ("tensor",)),
    (r"mlp/fc2/kernel$", ("tensor", "fsdp")),
    # Everything else large: FSDP over its largest dimension.
    (r".*", "fsdp_largest"),
)


def default_config():
  """The `mesh` section: device mesh sizes; -1: the devices left over."""
  mesh = ml_collections.ConfigDict()
  mesh.data = -1  # batch split, parameters replicated
  mesh.fsdp = 1  # batch split, parameters and optimizer state sharded
  mesh.tensor = 1  # attention heads and MLP units split
  return mesh


def check_config(config, num_devices):
  """UserError if config.mesh does not fit `num_devices`, or the batch does not split over it (after
  config.grad_accum_steps has been checked)."""
  mesh = mesh_shape(config.mesh, num_devices)
  shards = mesh["data"] * mesh["fsdp"]
  if config.batch_size % (shards * config.grad_accum_steps):
    fields.fail("batch_size", config.batch_size,
                f"a multiple of {shards * config.grad_accum_steps}: the batch is split over mesh data={mesh['data']} x "
                f"fsdp={mesh['fsdp']} = {shards} devices and grad_accum_steps={config.grad_accum_steps} micro-batches")


def mesh_shape(mesh_config, num_devices):
  """{"data": n, "fsdp": n, "tensor": n} from config.mesh, -1 resolved; UserError if it does not fit."""
  sizes = {axis: int(mesh_config[axis]) for axis in AXES}
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  described = " ".join(f"{axis}={sizes[axis]}" for axis in AXES)
  if any(s == 0 or s < -1 for s in sizes.values()) or sum(s == -1 for s in sizes.values()) > 1:
    raise UserError(f"config.mesh {described} is not allowed: sizes are positive, with at most one -1 (the rest)")
  if -1 in sizes.values():
    if num_devices % fixed:
      raise UserError(f"config.mesh {described} does not fit {num_devices} devices: "
                      f"{num_devices} is not a multiple of {fixed}")
    sizes = {axis: num_devices // fixed if s == -1 else s for axis, s in sizes.items()}
  if int(np.prod(list(sizes.values()))) != num_devices:
    raise UserError(f"config.mesh {described} needs {int(np.prod(list(sizes.values())))} devices, "
                    f"there are {num_devices}")
  return sizes


def make_mesh(mesh_config=None, devices=None):
  """The mesh of config.mesh over `devices` (default: all of every process); no config: all on "data"."""
  devices = jax.devices() if devices is None else devices
  mesh_config = mesh_config or {"data": -1, "fsdp": 1, "tensor": 1}
  sizes = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES, axis_types=(AxisType.Auto,) * len(AXES),
                       devices=devices)


def spec_for(name, shape, mesh):
  """The PartitionSpec of an array called `name` (a path like "blocks/0/mlp/fc1/kernel") of `shape`."""
  rule = next(axes for pattern, axes in RULES if re.search(pattern, name))
  if rule == "fsdp_largest":
    axes = [None] * len(shape)
    if shape and np.prod(shape) >= FSDP_MIN_SIZE:
      axes[int(np.argmax(shape))] = "fsdp"
  else:
    axes = list(rule) if len(rule) == len(shape) else [None] * len(shape)
  axes = [a if a is not None and dim % mesh.shape[a] == 0 and mesh.shape[a] > 1 else None
          for a, dim in zip(axes, shape)]
  return P(*axes)


def shardings_for(tree, mesh):
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) by RULES on each leaf's path; the
  optimizer state's moments carry their parameter's path inside theirs, so they follow their parameter."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, spec_for(trees.path_name(path), tuple(leaf.shape), mesh)), tree)


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharding(mesh, ndim=1):
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def process_rows(mesh, global_batch):
  """(start, stop): the rows of each global batch that this process's devices hold, and so must read.
  With the mesh's batch axes spread over processes in order, process p reads rows p*b .. (p+1)*b."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  starts = [idx[0].start or 0 for idx in index_map.values()]
  stops = [global_batch if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
  lo, hi = min(starts), max(stops)
  covered = sum(stop - start for start, stop in sorted(set(zip(starts, stops))))
  if covered != hi - lo:
    raise UserError("this process's devices hold non-contiguous rows of the batch; use a mesh whose batch "
                    "axes (data, fsdp) follow the process order")
  return lo, hi


def global_batch(mesh, local_batch, global_size=None):
  """This process's rows of the batch (numpy) -> global jax.Arrays of `global_size` rows (default: this
  process's times the process count) split over the batch axes."""
  def put(x):
    x = np.asarray(x)
    size = global_size or x.shape[0] * jax.process_count()
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x, (size,) + x.shape[1:])
  return jax.tree.map(put, local_batch)
