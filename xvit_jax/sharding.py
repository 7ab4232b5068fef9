"""The device mesh, and where every array lives on it.

Mesh axes (`config.mesh`, sizes; -1 takes the devices left over):
  data    pure data parallelism: the batch is split, parameters are replicated
  fsdp    the batch is split too, and parameters and optimizer state are sharded (ZeRO-3 style: XLA
          gathers each weight where it is used)
  frames  context parallelism: the clip's frames (the T of the video and of the (B, T, N, C) activations) are
          split, parameters are replicated; frame-wise attention needs nothing from other chips, X-ViT's mixing
          takes its neighbour frames at a shard's edge from the next chip (a halo), the temporal-attention head
          gathers the T frame tokens. A frames group (with its tensor group) lies within one process: each
          process reads whole clips (process_rows)
  tensor  Megatron-style: attention heads and MLP hidden units are split, the batch is not

Parameters and optimizer state are placed by RULES: the first pattern found in a parameter's path
("blocks/3/attn/qkv/kernel") gives one mesh axis (or None) per dimension. An axis that does not divide its
dimension is dropped (that dimension is replicated), so any model fits any mesh. A stacked run of blocks
("stacks/0/attn/qkv/kernel", layouts.py) is placed as each of its blocks, its leading axis whole on every chip:
per-chip bytes are those of the blocks stored one by one.
"""

import contextvars
import functools
import re

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from xvit_jax import fields, layouts, trees
from xvit_jax.errors import UserError

AXES = ("data", "fsdp", "frames", "tensor")  # the last vary fastest: tensor, then frames, on the nearest chips
BATCH_AXES = ("data", "fsdp")
VIDEO = "video"  # the batch's pixels, (B, [views,] T, H, W, 3): T goes over "frames" too
FRAME_ATTENTION = ("xvit", "spatial")  # attention within a frame: what mesh.frames can split

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
  mesh.frames = 1  # the clip's frames split (xvit and spatial attention); a divisor of model.num_frames
  mesh.tensor = 1  # attention heads and MLP units split
  return mesh


def check_config(config, num_devices, devices_per_host=None):
  """UserError if config.mesh does not fit `num_devices` (`devices_per_host` to a process; default: shared
  evenly by this run's processes), the batch does not split over it (after config.grad_accum_steps has been
  checked) or the model's frames do not."""
  mesh = mesh_shape(config.mesh, num_devices)
  check_frames(config, mesh, devices_per_host or num_devices // jax.process_count())
  shards = mesh["data"] * mesh["fsdp"]
  if config.batch_size % (shards * config.grad_accum_steps):
    fields.fail("batch_size", config.batch_size,
                f"a multiple of {shards * config.grad_accum_steps}: the batch is split over mesh data={mesh['data']} x "
                f"fsdp={mesh['fsdp']} = {shards} devices and grad_accum_steps={config.grad_accum_steps} micro-batches")


def check_frames(config, mesh, devices_per_host):
  """mesh["frames"] > 1: frame-wise attention, whole frames per chip, whole segments of mixing or whole chips per
  segment (so the (T) -> (T/segment, segment) reshape stays split over chips), a frames group in one host."""
  frames, m = mesh["frames"], config.model
  if frames == 1:
    return
  if m.attention not in FRAME_ATTENTION:
    fields.fail("mesh.frames", frames, f"1 with model.attention={m.attention!r}: only attention within a frame "
                f"({' or '.join(FRAME_ATTENTION)}) splits the frames across chips")
  if m.num_frames % frames:
    fields.fail("mesh.frames", frames, f"a divisor of model.num_frames={m.num_frames}")
  segments = m.num_frames // (m.shift_segment or m.num_frames)
  if m.attention == "xvit" and segments % frames and frames % segments:
    fields.fail("model.shift_segment", m.shift_segment, f"one that cuts model.num_frames={m.num_frames} into a "
                f"multiple or a divisor of mesh.frames={frames} segments (now {segments}), so each chip holds whole "
                "segments or each segment whole chips")
  if frames * mesh["tensor"] > devices_per_host:
    raise UserError(f"config.mesh frames={frames} x tensor={mesh['tensor']} spans hosts: a process has "
                    f"{devices_per_host} devices and reads whole clips, so a frames group must lie within one host")


def mesh_shape(mesh_config, num_devices):
  """{"data": n, "fsdp": n, "frames": n, "tensor": n} from config.mesh, -1 resolved (an axis it lacks: 1);
  UserError if it does not fit."""
  sizes = {axis: int(mesh_config.get(axis, 1)) for axis in AXES}
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
  """The mesh of config.mesh over `devices` (default: all of every process); no config: all on "data".
  jax.make_mesh follows the chips' links, and may lay an axis across hosts; with frames > 1 on several
  processes each process's devices are its own frames x tensor groups instead (host_local_devices)."""
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(mesh_config or {"data": -1}, len(devices))
  shape, types = tuple(sizes[a] for a in AXES), (AxisType.Auto,) * len(AXES)
  if sizes["frames"] > 1 and len({d.process_index for d in devices}) > 1:
    return jax.sharding.Mesh(host_local_devices(devices, shape), AXES, axis_types=types)
  return jax.make_mesh(shape, AXES, axis_types=types, devices=devices)


def host_local_devices(devices, shape):
  """`devices` as an array of the mesh `shape` (AXES order) in which every frames x tensor group is devices of
  one process, and process p holds the p-th run of batch shards (the rows process_rows gives it)."""
  processes = sorted({d.process_index for d in devices})
  groups = shape[2] * shape[3]
  own = [sorted((d for d in devices if d.process_index == p), key=lambda d: d.id) for p in processes]
  if len({len(o) for o in own}) > 1 or len(own[0]) % groups:
    raise UserError(f"config.mesh frames={shape[2]} x tensor={shape[3]} does not divide each process's devices "
                    f"({', '.join(str(len(o)) for o in own)})")
  return np.array([d for o in own for d in o], dtype=object).reshape(shape)


def spec_for(name, shape, mesh):
  """The PartitionSpec of an array called `name` (a path like "blocks/0/mlp/fc1/kernel") of `shape`."""
  if layouts.is_stacked(name):  # (blocks, ...): each block's parameter placed as it would be alone
    return P(None, *spec_for(name.replace("stacks/", "blocks/"), shape[1:], mesh))
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


def batch_sharding(mesh, ndim=1, key=None):
  """Rows over the batch axes; the batch's VIDEO (..., T, H, W, 3) also along T over "frames" (when above 1)."""
  spec = [BATCH_AXES] + [None] * (ndim - 1)
  if key == VIDEO and mesh.shape.get("frames", 1) > 1:
    spec[ndim - 4] = "frames"
  return NamedSharding(mesh, P(*spec))


_PLATFORM = contextvars.ContextVar("platform", default=None)  # that of the mesh being traced over


def traced_over(mesh, fn):
  """`fn` traced (under jax.jit) with `mesh` as the abstract mesh, so split_frames inside the model sees its
  axes, and the mesh's platform as traced_platform's; `fn` itself without a mesh."""
  if mesh is None:
    return fn

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    token = _PLATFORM.set(mesh.devices.flat[0].platform)
    try:
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return fn(*args, **kwargs)
    finally:
      _PLATFORM.reset(token)
  return traced


def traced_platform():
  """The platform the program being traced is for: that of the mesh's devices when traced over one (traced_over:
  "tpu" for a slice compiled ahead of time on a CPU machine, tools/plan.py), else JAX's default backend."""
  return _PLATFORM.get() or jax.default_backend()


def traced_size(axis):
  """The size of `axis` of the mesh being traced over (traced_over); 1 without a mesh or that axis."""
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty else mesh.shape.get(axis, 1)


def traced_frames():
  """The size of the frames axis of the mesh being traced over (traced_over); 1 without a mesh."""
  return traced_size("frames")


def split_frames(x, *rest):
  """Activations (B, T, ...) laid out as the video, when traced over a mesh of several devices (traced_over):
  rows over the batch axes, frames over "frames" (when above 1 and dividing T), the later axes as `rest` says
  (None: whole on every chip) or, past it, as XLA chooses; otherwise x as it is (no mesh, one device).
  Pinned at every block and around the mixing, XLA never moves the token stream between the batch and the
  channels (an FSDP step would otherwise reshuffle it with all-to-alls), nor gathers split frames.
  With frames split such activations must not be reshaped with B and T merged: a chip's rows and frames are
  no contiguous run of B*T, so XLA would gather the frames."""
  frames = "frames" if traced_frames() > 1 and x.shape[1] % traced_frames() == 0 else None
  return split_rows(x, frames, *rest)


def split_rows(x, *rest):
  """x (B, ...) with its rows over the batch axes, the later axes as `rest` says (None: whole on every chip) or,
  past it, as XLA chooses, when traced over a mesh of several devices (traced_over); otherwise x as it is."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  rest = list(rest) + [P.UNCONSTRAINED] * (x.ndim - 1 - len(rest))
  return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *rest))


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
  process's times the process count) split over the batch axes (and the VIDEO's frames over "frames")."""
  def put(path, x):
    x = np.asarray(x)
    size = global_size or x.shape[0] * jax.process_count()
    where = batch_sharding(mesh, x.ndim, getattr(path[0], "key", None) if path else None)
    return jax.make_array_from_process_local_data(where, x, (size,) + x.shape[1:])
  return jax.tree_util.tree_map_with_path(put, local_batch)
