"""A training run on a TPU slice, planned on any machine before paying for the slice.

    python -m xvit_jax.tools.plan --config=configs/k400.py --topology=v5e:4x4 --config.dtype=bfloat16 \\
        [--config.FIELD=VALUE ...] [--mfu=0.4] [--json] [--hlo=PATH] [--strict] [--noeval]

builds the train step exactly as training does (train.make_train_step over the state of state.abstract, the
mesh of config.mesh, the batch the pipeline makes: no data read, no weights made) and the eval step, compiles
both ahead of time for the named slice with the XLA TPU compiler of libtpu (no TPU needed: the slice is
described by jax.experimental.topologies), and prints what a chip needs (XLA's memory analysis) against its
HBM (chips.py), the model FLOPs of a step, the step time and clips/s at an assumed MFU, the input that
implies per host, and the compile time.

Exit status: 0 with a plan, fits or not; with --strict 1 when it does not fit; 2 for a mistake (a config
value, an unknown topology, a mesh the slice cannot hold, no libtpu), printed as one line.

The jax backend of this process stays the CPU (JAX_PLATFORMS=cpu unless set): nothing runs on a TPU, the
TPU compiler works on abstract devices, and several plans may run at once (ALLOW_MULTIPLE_LIBTPU_LOAD=1 unless
set). libtpu's start-up warnings (no TPU hostnames, no accelerator type: there is no TPU here) are kept off
the screen.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported: compile for the TPU, run nothing on one
# libtpu lets one process at a time load it (/tmp/libtpu_lockfile), which guards a TPU's chips; a plan uses none,
# so plans may run side by side (and beside a process that holds the lock)
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from xvit_jax import chips  # noqa: E402
from xvit_jax.errors import UserError  # noqa: E402
from xvit_jax.tools import cli  # noqa: E402

GIB = 1024 ** 3
LIBTPU = "0.0.50.1"  # the libtpu jax[tpu]==0.12.0.1 pins (requirements-test.txt)
INSTALL = f"pip install -r requirements-test.txt (or pip install libtpu=={LIBTPU}, the version jax 0.12.0.1 pins)"

# One data worker (one CPU core) making Kinetics train clips (configs/k400.py, format 2.0.0): BENCHMARKS.md,
# "Input at accelerator speed", measured 2026-12-04 on the faster kind of the 2-core development VM (AMD EPYC
# with AVX-512; on the slower kind, without it, expect fewer).
INPUT_CLIPS_PER_WORKER = 49.4


@dataclasses.dataclass(frozen=True)
class Kind:
  """A TPU generation as jax.experimental.topologies names its slices."""
  chip: str             # chips.by_name
  dims: int             # 2: AxB (v5e, v6e), 3: AxBxC (v4, v5p)
  chip_config: str      # "megacore": one jax device per chip of two TensorCores (v4, v5p)
  single_host_max: int  # slices of up to this many chips are one host (v5e/v6e: 8-chip machines)


KINDS = {"v4": Kind("v4", 3, "megacore", 4), "v5e": Kind("v5e", 2, "default", 8),
         "v5p": Kind("v5p", 3, "megacore", 4), "v6e": Kind("v6e", 2, "default", 8)}
# HBM a compiled program may use per chip, as the XLA TPU compiler of libtpu 0.0.50.1 counts it: the "available
# HBM" of its CompileTimeHbmOom message (measured 2026-12-03, tests/test_plan.py checks v5e's); a little less
# than the chip's (chips.py) on v4, v5e and v6e.
USABLE_HBM_GIB = {"v4": 30.75, "v5e": 15.75, "v5p": 95.73, "v6e": 31.24}
HOST_BOUNDS = (2, 2, 1)  # chips per host of a multi-host slice, along each axis of the slice (4 chips a host)


def known_topologies():
  return ", ".join(f"{name}:{'x'.join('ABC'[:kind.dims])}" for name, kind in KINDS.items())


def parse_topology(text):
  """(Kind, shape) of "v5e:4x4" / "v5p:2x2x4"; UserError listing the known kinds and shapes otherwise."""
  match = re.fullmatch(r"(v\w+):(\d+(?:x\d+)*)", text or "")
  kind = KINDS.get(match.group(1)) if match else None
  shape = tuple(int(n) for n in match.group(2).split("x")) if match else ()
  if kind is None or len(shape) != kind.dims or min(shape) < 1:
    raise UserError(f"--topology={text}: not a known TPU slice; known: {known_topologies()} in chips "
                    "(e.g. v5e:4x4 is 16 v5e chips, v5p:2x2x4 16 v5p chips)")
  return kind, shape


@contextlib.contextmanager
def quiet_fd2():
  """fd 2 (where libtpu's C++ logging writes) into a temporary file for the duration: libtpu warns that this
  machine has no TPU hostnames and no accelerator type, true and beside the point here. Python's own
  errors are raised after fd 2 is restored, so they still reach the user."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)


def slice_devices(text):
  """(Kind, shape, the slice's abstract TPU devices, chips per host) for a --topology value."""
  kind, shape = parse_topology(text)
  try:
    import libtpu  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise UserError(f"compiling for a TPU slice needs libtpu, which is not installed: {INSTALL}") from None
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  count = math.prod(shape)
  bounds = tuple(shape) + (1,) * (3 - len(shape)) if count <= kind.single_host_max else HOST_BOUNDS
  wrap = (all(n >= 4 for n in shape),) * 3 if kind.dims == 3 else tuple(n == 16 for n in shape) + (False,)
  try:
    with quiet_fd2():
      devices = topologies.get_topology_desc(
          platform="tpu", topology_name=text, chip_config_name=kind.chip_config, chips_per_host_bounds=bounds,
          num_slices=1, wrap=wrap).devices
  except RuntimeError as e:  # jaxlib's errors, the XLA ones (JaxRuntimeError) included
    message = str(e).splitlines()[0]
    if "TPU support not installed" in message:
      raise UserError(f"compiling for a TPU slice needs libtpu, which jax cannot load: {INSTALL}") from None
    raise UserError(f"--topology={text}: libtpu cannot describe this slice: {message}") from None
  hosts = len({d.process_index for d in devices})
  return kind, shape, list(devices), len(devices) // hosts


def shard_bytes(leaf):
  """Bytes of one chip's shard of an array (a ShapeDtypeStruct with a NamedSharding)."""
  return math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize


def tree_bytes(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return sum(shard_bytes(leaf) for leaf in jax.tree.leaves(tree))


def train_batch(config, mesh):
  """The global train batch as data.pipeline makes it (its docstring): uint8 clips, labels, the bad-record
  count, erasing boxes (augment.random_erasing > 0 on a prepared dataset) and mixup's draws (augment.mixup),
  split over the batch axes (the video's frames over mesh.frames) as sharding.global_batch places it."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from xvit_jax.data import label_heads, sources  # pylint: disable=import-outside-toplevel
  m, b = config.model, config.batch_size
  heads = len(label_heads(config)[0])
  label = (b,) if heads == 1 else (b, heads)
  specs = {"video": ((b, m.num_frames, m.image_size, m.image_size, 3), jnp.uint8), "label": (label, jnp.int32),
           "bad": ((b,), jnp.int32)}
  if config.augment.random_erasing > 0 and config.data.name != sources.SYNTHETIC:
    specs["erase"] = ((b, 4), jnp.int32)
  if config.augment.mixup:
    specs.update(mixup_partner=((b,), jnp.int32), mixup_label=(label, jnp.int32), mixup_lam=((b,), jnp.float32))
  return placed(specs, mesh)


def eval_batch(config, mesh):
  """The global eval batch as data.pipeline makes it: every view's window of uint8 pixels and resize taps
  (sources.EvalViews), labels, the padding mask and the unreadable-video flags."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from xvit_jax.data import label_heads, sources  # pylint: disable=import-outside-toplevel
  b, heads = config.batch_size, len(label_heads(config)[0])
  specs = {key: ((b,) + shape, jnp.dtype(dtype)) for key, (shape, dtype) in sources.EvalViews(config).specs().items()}
  specs.update({"label": ((b,) if heads == 1 else (b, heads), jnp.int32), "mask": ((b,), jnp.float32),
                "bad": ((b,), jnp.float32)})
  return placed(specs, mesh)


def placed(specs, mesh):
  import jax  # pylint: disable=import-outside-toplevel
  from xvit_jax import sharding  # pylint: disable=import-outside-toplevel
  return {key: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape), key))
          for key, (shape, dtype) in specs.items()}


def memory(compiled):
  """Per-chip bytes of one call of a compiled step (XLA's memory analysis)."""
  m = compiled.memory_analysis()
  out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
         "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
         "code": m.generated_code_size_in_bytes}
  out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["code"]
  return out


def compiled_flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def resolve(config, chip_count, topology, chips_per_host=None):
  """The config as training resolves it (optim.resolve_schedule), checked as training checks it with
  `chip_count` devices (`chips_per_host` to a process); a mesh the slice cannot hold is a UserError naming
  config.mesh and the chips."""
  from xvit_jax import config_lib, optim, sharding  # pylint: disable=import-outside-toplevel
  config_lib.check(config, None)
  try:
    sizes = sharding.mesh_shape(config.mesh, chip_count)
  except UserError as e:  # it names config.mesh and the device count
    raise UserError(f"{e} ({topology} is a slice of {chip_count} chips, one device each)") from None
  sharding.check_config(config, chip_count, chips_per_host or chip_count)
  return optim.resolve_schedule(config)[0], sizes


def compile_for_tpu(lowered):
  """(compiled, None), or (None, the compiler's message) where the XLA TPU compiler refuses the program because
  it needs more HBM than the chip has (CompileTimeHbmOom): it then gives no memory analysis, only its sum."""
  import jax  # pylint: disable=import-outside-toplevel
  try:
    with quiet_fd2():
      return lowered.compile(), None
  except jax.errors.JaxRuntimeError as e:
    message = str(e).splitlines()[0]
    if "RESOURCE_EXHAUSTED" not in message or "hbm" not in message.lower():  # libtpu says "HBM" or "hbm"
      raise
    return None, re.sub(r"^.*?CompileTimeHbmOom: |\s*HLO module:.*$", "", message)


def compile_steps(config, devices, *, with_eval=True):
  """Compiles the train step (and the eval step) of `config` for `devices`: the compiled steps (None where
  the compiler ran out of HBM, with its message), the abstract state and batches, and each compile's seconds."""
  from xvit_jax import data, evaluate, optim, sharding, train  # pylint: disable=import-outside-toplevel
  from xvit_jax import state as state_lib  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh(config.mesh, devices)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  graphdef, state, shardings = state_lib.abstract(config, tx, mesh)
  batch = train_batch(config, mesh)
  out = {"mesh": mesh, "state": state, "batch": batch}
  started = time.perf_counter()
  lowered = train.make_train_step(config, graphdef, tx, schedule, shardings=shardings).lower(state, batch)
  out["train"], out["train_oom"] = compile_for_tpu(lowered)
  out["train_seconds"] = time.perf_counter() - started
  if with_eval:
    started = time.perf_counter()
    step = evaluate.make_eval_step(graphdef, data.label_heads(config), mesh)
    out["eval"], out["eval_oom"] = compile_for_tpu(step.lower(state["params"], eval_batch(config, mesh)))
    out["eval_seconds"] = time.perf_counter() - started
  return out


def memory_without_analysis(message, arguments, donated):
  """Per-chip bytes of a step the compiler refused for want of HBM: the arguments and the (donated) outputs
  from their shapes, the temporaries as the compiler's message rounds them ("... HLO temporaries (39.03G)
  ...", GiB); 0 where it does not say."""
  found = re.search(r"temporaries \(([\d.]+)([KMGT])\)", message)
  temporaries = int(float(found.group(1)) * 1024 ** "KMGT".index(found.group(2)) * 1024) if found else 0
  out = {"arguments": arguments, "outputs": donated, "aliased": donated, "temporaries": temporaries, "code": 0}
  out["total"] = arguments + temporaries
  return out


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def collectives(hlo):
  """{kind: count} of the collectives in a compiled program's text: what the step moves between chips. One
  collective counts once: an asynchronous pair (`-start`, `-done`) and the pieces the TPU compiler may cut it
  into (they share its channel_id). Spatial attention and X-ViT have the same on every mesh without a frames
  axis; a tensor axis adds all-reduces only (Megatron), never an all-to-all."""
  seen = {kind: set() for kind in COLLECTIVES}
  for number, line in enumerate(hlo.splitlines()):
    found = re.search(r"\b(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", line)
    if found and " = " in line:
      channel = re.search(r"channel_id=(\d+)", line)
      seen[found.group(1)].add(channel.group(1) if channel else f"line {number}")
  return {kind: len(ids) for kind, ids in seen.items()}


def loops(hlo):
  """{"while": loops in a compiled program's text, "windowed_matmuls": those of them that are XLA's windowed
  matmuls (an all-gather or reduce-scatter of sharded weights overlapped with the matmul, a shard an
  iteration)}: XLA's cost analysis counts a loop's body once."""
  windowed = set(re.findall(r"windowed_dot_general_body_(?:ag|rs)(?:\.\d+)?", hlo))
  return {"while": len(re.findall(r" while\(", hlo)), "windowed_matmuls": len(windowed)}


def remat_policy(model_config):
  """`config.model`'s remat policy resolved (models.remat_policy), imported when needed as jax is."""
  from xvit_jax import models  # pylint: disable=import-outside-toplevel
  return models.remat_policy(model_config)


def flops_reasons(config, mesh_sizes, ratio, counted):
  """Why the compiled step's FLOPs (all chips) differ from the model FLOPs by `ratio` (compiled / model), for
  a program with the `counted` loops (loops())."""
  if abs(ratio - 1) <= 0.03:
    return []
  reasons = []
  recomputed = {"full": "each block's forward", "dots": "each block's forward but its dense layers"}
  policy = remat_policy(config.model)
  if policy in recomputed:
    reasons.append(f"model.remat_policy={policy} recomputes {recomputed[policy]} in the backward pass (up to "
                   "about +1/3)")
  if config.model.get("scan_layers", False) and config.model.num_layers > 1:
    reasons.append("model.scan_layers runs each run of alike blocks as a loop whose body (one block) XLA counts "
                   "once (--config.model.scan_layers=False counts every block)")
  if counted["windowed_matmuls"]:
    reasons.append(f"{counted['windowed_matmuls']} matmuls are windowed loops that overlap gathering their fsdp- or "
                   "tensor-sharded weights with the multiplication, and XLA counts a loop's body (one shard) once")
  if config.grad_accum_steps > 1:
    reasons.append(f"the {config.grad_accum_steps} accumulation micro-batches are a loop, whose body XLA counts "
                   f"once (about 1/{config.grad_accum_steps})")
  if mesh_sizes["tensor"] > 1:
    reasons.append(f"with mesh tensor={mesh_sizes['tensor']} what is not split by heads or MLP units (layer "
                   "norms, embeddings, the head) is computed on every chip of a tensor group")
  other = counted["while"] - counted["windowed_matmuls"]
  if other and not config.grad_accum_steps > 1:
    reasons.append(f"{other} other loops in the program, each body counted once")
  reasons.append("the step also counts what is not the model (preprocessing, loss, the optimizer update) and "
                 "XLA's rewrites of the program")
  return reasons


def dominant(plan, state, batch):
  """The per-chip arrays and buffers, largest first, [(what, bytes)]; the largest parameters by name."""
  import jax  # pylint: disable=import-outside-toplevel
  from xvit_jax import trees  # pylint: disable=import-outside-toplevel
  m = plan["per_chip_bytes"]
  parts = [("temporaries: activations kept for the backward pass, gradients, XLA's scratch", m["temporaries"]),
           ("parameters", tree_bytes(state["params"])), ("optimizer state", tree_bytes(state["opt_state"])),
           ("train batch", tree_bytes(batch)), ("compiled code", m["code"])]
  params = sorted(((trees.path_name(p), shard_bytes(leaf)) for p, leaf in
                   jax.tree_util.tree_leaves_with_path(state["params"])), key=lambda x: -x[1])
  return sorted(parts, key=lambda x: -x[1]), params[:3]


def frames_split(config, sizes, chips_per_host):
  """The smallest frames axis (2, 4 or 8) taken from the data axis that `mesh.frames` accepts for this model
  and slice, or None (joint or divided attention, frames already split, no divisor, segments that do not fit)."""
  from xvit_jax import sharding  # pylint: disable=import-outside-toplevel
  if sizes["frames"] > 1:
    return None
  for frames in (2, 4, 8):
    if sizes["data"] % frames:
      continue
    try:
      sharding.check_frames(config, dict(sizes, data=sizes["data"] // frames, frames=frames), chips_per_host)
    except UserError:
      continue
    return frames
  return None


def suggestions(config, sizes, *, chips_per_host, activations_first=False):
  """What to try when the step does not fit, in --config overrides. `activations_first`: activations fill the
  chip (then a clip's frames split over chips may help, where 1 clip a chip cannot be halved)."""
  out = []
  shards = sizes["data"] * sizes["fsdp"]
  per_chip = config.batch_size // shards
  if sizes["fsdp"] == 1 and shards > 1:
    out.append(f"--config.mesh.fsdp={shards} --config.mesh.data=1: parameters and optimizer state sharded over "
               f"the {shards} chips instead of whole on each")
  if remat_policy(config.model) != "full":
    out.append("--config.model.remat_policy=full: keep only each block's input for the backward pass, not its "
               "activations")
  if per_chip > 1:
    out.append(f"--config.batch_size={per_chip // 2 * shards}: {per_chip // 2} clip(s) per chip instead of "
               f"{per_chip}")
    accum = config.grad_accum_steps * 2
    if config.batch_size % (shards * accum) == 0:
      out.append(f"--config.grad_accum_steps={accum}: the same batch of {config.batch_size} in {accum} "
                 "micro-batches, each with a share of the activations")
  frames = frames_split(config, sizes, chips_per_host) if activations_first else None
  if frames:
    t = config.model.num_frames
    out.append(f"--config.mesh.data={sizes['data'] // frames} --config.mesh.frames={frames}: each clip's {t} frames "
               f"split over {frames} chips, {frames}x the clips a chip holds with {t // frames} frames of each "
               "(what a chip keeps grows with a clip's frames on it)")
  return out


def make_plan(config, topology, *, mfu=0.4, with_eval=True, input_per_worker=INPUT_CLIPS_PER_WORKER):
  """The plan of `config` on the slice `topology` as a JSON-ready dict (see the module docstring)."""
  from xvit_jax import flops  # pylint: disable=import-outside-toplevel
  kind, _, devices, chips_per_host = slice_devices(topology)
  config, sizes = resolve(config, len(devices), topology, chips_per_host)
  chip = chips.by_name(kind.chip)
  usable = int(USABLE_HBM_GIB[kind.chip] * GIB)
  steps = compile_steps(config, devices, with_eval=with_eval)
  n, batch, state = len(devices), config.batch_size, steps["state"]
  per_chip_batch = batch // (sizes["data"] * sizes["fsdp"])
  per_clip = flops.train_flops_per_clip(config.model, dtype=config.dtype)
  per_step = per_clip * batch
  step_seconds = per_step / (n * chip.peak_flops * mfu)
  per_chip_rate = batch / step_seconds / n
  plan = {
      "topology": topology, "chip": chip.name, "device_kind": devices[0].device_kind, "chips": n,
      "chips_per_host": chips_per_host, "hosts": n // chips_per_host, "mesh": sizes, "batch_size": batch,
      "per_chip_batch": per_chip_batch, "frames_per_chip": config.model.num_frames // sizes["frames"],
      "grad_accum_steps": config.grad_accum_steps, "dtype": config.dtype,
      "remat": remat_policy(config.model) != "none", "remat_policy": remat_policy(config.model),
      "scan_layers": bool(config.model.get("scan_layers", False)), "compiled": steps["train"] is not None,
      "hbm_bytes": chip.hbm_bytes, "hbm_source": chip.source, "usable_hbm_bytes": usable,
      "flops_per_clip": per_clip, "flops_per_step": per_step, "mfu": mfu, "peak_flops_per_chip": chip.peak_flops,
      "step_seconds": step_seconds, "clips_per_second_per_chip": per_chip_rate,
      "clips_per_second": per_chip_rate * n, "input_clips_per_second_per_host": per_chip_rate * chips_per_host,
      "input_clips_per_second_per_worker": input_per_worker,
      "input_workers_per_host": math.ceil(per_chip_rate * chips_per_host / input_per_worker),
      "compile_seconds": steps["train_seconds"] + steps.get("eval_seconds", 0.0),
      "train_compile_seconds": steps["train_seconds"]}
  if steps["train"] is not None:
    plan["per_chip_bytes"] = memory(steps["train"])
    plan["compiled_flops_per_chip"] = compiled_flops(steps["train"])
    plan["compiled_to_model_flops"] = plan["compiled_flops_per_chip"] * n / per_step
    plan["hlo"] = steps["train"].as_text()  # the compiled program's text (--hlo); not in the JSON
    plan["compiled_loops"] = loops(plan["hlo"])
    plan["compiled_collectives"] = collectives(plan["hlo"])
    plan["flops_reasons"] = flops_reasons(config, sizes, plan["compiled_to_model_flops"], plan["compiled_loops"])
    fits = plan["per_chip_bytes"]["total"] <= usable
  else:  # the compiler refused it: its message, and the bytes of the arguments from their shapes
    plan["compiler_error"] = steps["train_oom"]
    plan["per_chip_bytes"] = memory_without_analysis(steps["train_oom"], tree_bytes(state) + tree_bytes(steps["batch"]),
                                                     tree_bytes(state))
    plan["compiled_flops_per_chip"] = plan["compiled_to_model_flops"] = plan["hlo"] = None
    plan["compiled_collectives"] = None
    plan["flops_reasons"], fits = [], False
  if with_eval:
    # while training, the eval step runs with the whole train state on the chip, not only its parameters
    rest = tree_bytes(state) - tree_bytes(state["params"])
    if steps["eval"] is not None:
      eval_bytes = memory(steps["eval"])
      plan["eval"] = {"per_chip_bytes": eval_bytes, "with_train_state_bytes": eval_bytes["total"] + rest,
                      "fits": eval_bytes["total"] + rest <= usable}
    else:
      plan["eval"] = {"per_chip_bytes": None, "with_train_state_bytes": None, "fits": False,
                      "compiler_error": steps["eval_oom"]}
    plan["eval"]["compile_seconds"] = steps["eval_seconds"]
    fits = fits and plan["eval"]["fits"]
  plan["fits"] = fits
  parts, params = dominant(plan, state, steps["batch"])
  plan["dominant"] = [{"what": what, "bytes": size} for what, size in parts]
  plan["largest_parameters"] = [{"name": name, "bytes": size} for name, size in params]
  # activations fill the chip: the temporaries beyond the gradients and one update (two copies of the parameters)
  # outweigh the parameters and optimizer state (a rule of thumb)
  params_bytes = tree_bytes(state["params"])
  activations = plan["per_chip_bytes"]["temporaries"] - 2 * params_bytes
  activations_first = activations > params_bytes + tree_bytes(state["opt_state"])
  plan["suggestions"] = [] if fits else suggestions(config, sizes, chips_per_host=chips_per_host,
                                                    activations_first=activations_first)
  return plan


def size(n):
  """Bytes as GiB, or MiB below one GiB."""
  return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2 ** 20:.1f} MiB"


def fit_words(needed, hbm):
  spare = hbm - needed
  return f"fits, {size(spare)} to spare" if spare >= 0 else f"DOES NOT FIT by {size(-spare)}"


def text(plan):
  """The plan as the lines the command prints."""
  m, hbm, usable = plan["per_chip_bytes"], plan["hbm_bytes"], plan["usable_hbm_bytes"]
  mesh = " ".join(f"{a}={n}" for a, n in plan["mesh"].items())
  frames = f", {plan['frames_per_chip']} frame(s) of each" if plan["mesh"]["frames"] > 1 else ""
  lines = [f"{plan['topology']}: {plan['chips']} {plan['chip']} chips ({plan['device_kind']}), {plan['hosts']} "
           f"host(s) of {plan['chips_per_host']}; mesh {mesh}; batch {plan['batch_size']} ({plan['per_chip_batch']} "
           f"clip(s) per chip{frames}), {plan['dtype']}, remat {plan['remat_policy']}, layers "
           f"{'scanned' if plan['scan_layers'] else 'unrolled'}, grad_accum_steps "
           f"{plan['grad_accum_steps']}"]
  if plan["compiled"]:
    lines.append("train step, per chip (XLA's memory analysis):")
  else:
    lines.append(f"train step: the XLA TPU compiler refused it: {plan['compiler_error']}")
    lines.append("per chip (arguments and outputs from their shapes, temporaries from that message):")
  for key in ("arguments", "outputs", "aliased", "temporaries", "code"):
    lines.append(f"  {key:<12} {'-' if key == 'aliased' else ' '}{size(m[key]):>11}")
  lines.append(f"  {'total':<12}  {size(m['total']):>11} of {size(hbm)} HBM ({plan['hbm_source']}), {size(usable)} "
               "of it usable by a program: " + (fit_words(m["total"], usable) if plan["compiled"] else
                                                f"DOES NOT FIT (by about {size(m['total'] - usable)}, by that count)"))
  if "eval" in plan:
    e = plan["eval"]
    if e["per_chip_bytes"] is None:
      lines.append(f"eval step: the XLA TPU compiler refused it: {e['compiler_error']}")
    else:
      lines.append(f"eval step, per chip: {size(e['per_chip_bytes']['total'])}; with the rest of the train state "
                   f"beside it {size(e['with_train_state_bytes'])}: {fit_words(e['with_train_state_bytes'], usable)}")
  if not plan["fits"]:
    lines.append("per chip, largest first: " + "; ".join(f"{d['what']} {size(d['bytes'])}" for d in plan["dominant"]))
    lines.append("largest parameters per chip: " + ", ".join(f"{p['name']} {size(p['bytes'])}"
                                                             for p in plan["largest_parameters"]))
    lines.append("to try: " + "; or ".join(plan["suggestions"]))
  model = (f"model FLOPs: {plan['flops_per_clip'] / 1e9:.1f} GFLOP per clip (3x the forward), "
           f"{plan['flops_per_step'] / 1e12:.2f} TFLOP per step")
  if plan["compiled"]:
    model += (f"; the compiled step: {plan['compiled_flops_per_chip'] / 1e12:.3f} TFLOP per chip, "
              f"{plan['compiled_to_model_flops']:.2f}x the model's over the slice")
  lines.append(model)
  if plan["compiled"]:
    counts = ", ".join(f"{kind} {count}" for kind, count in plan["compiled_collectives"].items() if count)
    lines.append(f"collectives in the compiled train step: {counts or 'none'}")
  for reason in plan["flops_reasons"]:
    lines.append(f"  (the compiled count differs: {reason})")
  lines.append(f"at {100 * plan['mfu']:.0f}% MFU ({plan['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s bf16 peak per "
               f"chip): {plan['step_seconds']:.3g} s per step, {plan['clips_per_second_per_chip']:.3g} clips/s per "
               f"chip, {plan['clips_per_second']:.3g} for the slice")
  lines.append(f"input: {plan['input_clips_per_second_per_host']:.3g} clips/s per host ({plan['chips_per_host']} "
               f"chips); one worker core made {plan['input_clips_per_second_per_worker']:g} Kinetics train clips/s "
               f"(BENCHMARKS.md, 2026-12-03, a 2-core VM): about {plan['input_workers_per_host']} worker core(s) "
               "per host")
  compile_line = f"compile: train step {plan['train_compile_seconds']:.0f} s"
  if "eval" in plan:
    compile_line += f", eval step {plan['eval']['compile_seconds']:.0f} s"
  lines.append(compile_line)
  return "\n".join(lines)


def main():
  f = flags.FLAGS
  if not 0 < f.mfu <= 1:
    raise UserError(f"--mfu={f.mfu}: a fraction of the peak in (0, 1]")
  plan = make_plan(f.config, f.topology, mfu=f.mfu, with_eval=f.eval, input_per_worker=f.input_per_worker)
  if f.hlo and plan["hlo"]:  # none where the compiler refused the step
    with open(f.hlo, "w") as out:
      out.write(plan["hlo"])
  del plan["hlo"]
  print(json.dumps(plan, indent=1) if f.json else text(plan))
  if f.strict and not plan["fits"]:
    sys.exit(1)


if __name__ == "__main__":  # flags defined here: importing the functions (the tests do) defines none
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py), optionally 'file.py:arg'.")
  flags.DEFINE_string("topology", None, f"The TPU slice, in chips: {known_topologies()} (e.g. v5e:4x4).")
  flags.DEFINE_float("mfu", 0.4, "Assumed model FLOPs utilisation for the step time.")
  flags.DEFINE_float("input_per_worker", INPUT_CLIPS_PER_WORKER,
                     "Train clips/s one data worker (one CPU core) makes; default: BENCHMARKS.md's Kinetics number.")
  flags.DEFINE_bool("json", False, "Print the plan as one JSON object.")
  flags.DEFINE_string("hlo", None, "Write the compiled train step's program text (compiled.as_text()) here.")
  flags.DEFINE_bool("strict", False, "Exit with status 1 when the plan does not fit.")
  flags.DEFINE_bool("eval", True, "Also compile the eval step (--noeval: the train step only, half the time).")
  flags.mark_flags_as_required(["config", "topology"])
  cli.run(main)
