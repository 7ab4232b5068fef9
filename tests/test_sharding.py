"""Sharding over a data/fsdp/frames/tensor mesh, gradient accumulation, remat and mixed precision: each gives
the training an unsharded float32 step gives, on real multi-device meshes."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from conftest import REPO, cpu_env, final_params, main_config, read_metrics, tiny_config, train_main
from xvit_jax import optim, sharding, train
from xvit_jax import state as state_lib
from xvit_jax.errors import UserError
from xvit_jax.models import create_model, remat_policy
from xvit_jax.models.scan import REMAT_POLICIES

MESH = AbstractMesh((2, 4, 1, 2), sharding.AXES)


@pytest.mark.parametrize("name,shape,spec", [
    ("blocks/0/attn/qkv/kernel", (768, 3, 12, 64), P("fsdp", None, "tensor", None)),  # whole heads per device
    ("blocks/0/attn/qkv/bias", (3, 12, 64), P(None, "tensor", None)),
    ("blocks/0/attn/proj/kernel", (768, 768), P("tensor", "fsdp")),
    ("blocks/0/mlp/fc1/kernel", (768, 3072), P("fsdp", "tensor")),
    ("blocks/0/mlp/fc2/kernel", (3072, 768), P("tensor", "fsdp")),
    ("blocks/0/temporal_attn/qkv/kernel", (768, 3, 12, 64), P("fsdp", None, "tensor", None)),
    ("head/encoder/0/attn/qkv/kernel", (768, 3, 12, 64), P("fsdp", None, "tensor", None)),
    ("opt_state/2/0/blocks/3/mlp/fc1/kernel", (768, 3072), P("fsdp", "tensor")),  # momentum follows its parameter
    ("patch_embed/kernel", (16, 16, 3, 768), P(None, None, None, "fsdp")),
    ("pos_embed", (197, 768), P(None, "fsdp")),
    ("head/fc2/kernel", (768, 174), P("fsdp", None)),
    ("blocks/0/mlp/fc1/bias", (3072,), P("tensor")),
    ("blocks/0/norm1/scale", (768,), P(None)),  # small: replicated
    ("blocks/0/attn/qkv/kernel", (30, 3, 6, 5), P(None, None, "tensor", None)),  # fsdp=4 does not divide 30: dropped
    ("blocks/0/attn/qkv/kernel", (32, 3, 3, 8), P("fsdp", None, None, None)),  # 3 heads: not split over tensor=2
    ("step", (), P()),
])
def test_rules_place_each_parameter(name, shape, spec):
  assert sharding.spec_for(name, shape, MESH) == spec


def test_mesh_sizes_resolve_and_mismatches_name_the_numbers():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {"data": 4, "fsdp": 2, "frames": 1,
                                                                         "tensor": 1}
  assert sharding.mesh_shape({"data": 1, "frames": 2, "tensor": -1}, 8) == {"data": 1, "fsdp": 1, "frames": 2,
                                                                           "tensor": 4}
  with pytest.raises(UserError, match=r"config.mesh data=2 fsdp=4 frames=1 tensor=2 needs 16 devices, there are 8"):
    sharding.mesh_shape({"data": 2, "fsdp": 4, "tensor": 2}, 8)


def test_frames_the_model_or_the_hosts_cannot_split_are_refused_in_one_line():
  """mesh.frames: attention within a frame only, whole frames a chip, X-ViT's mixing segments whole on a chip or
  whole chips to a segment, a frames group on one host; what can work passes."""
  refused = [
      ({"attention": "joint"}, 4, 8, "config.mesh.frames=4", "model.attention='joint'"),
      ({"attention": "divided"}, 4, 8, "config.mesh.frames=4", "model.attention='divided'"),
      ({"num_frames": 6}, 4, 8, "config.mesh.frames=4", "a divisor of model.num_frames=6"),
      ({"num_frames": 12, "shift_segment": 2}, 4, 8, "config.model.shift_segment=2", "mesh.frames=4 segments (now 6)"),
      ({"num_frames": 8}, 8, 4, "config.mesh frames=8 x tensor=1 spans hosts", "a process has 4 devices"),
  ]
  for model, frames, per_host, culprit, allowed in refused:
    config = tiny_config(**model)
    config.mesh.frames = frames
    with pytest.raises(UserError) as error:
      sharding.check_config(config, 16, per_host)
    assert culprit in str(error.value) and allowed in str(error.value) and "\n" not in str(error.value)
  for model in ({"shift_segment": None}, {"shift_segment": 2}, {"shift_segment": 4}, {"attention": "spatial"}):
    config = tiny_config(num_frames=8, **model)
    config.mesh.frames = 4
    sharding.check_config(config, 16, 4)


# 8 host devices, set before JAX starts: the state's placement, then `python -m xvit_jax.main`'s training
# (train_and_evaluate) of each run given as {workdir: [overrides]} in argv[1]
ON_8_DEVICES = """
import json, sys
sys.path.insert(0, "tests")
import jax
from conftest import main_config, tiny_config
from xvit_jax import optim, sharding, state, train, trees
c = tiny_config(num_layers=1, hidden_size=64, num_heads=4, mlp_dim=256, num_frames=4, image_size=32)
c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
mesh = sharding.make_mesh(c.mesh)
tx, _ = optim.make_optimizer(c.optimizer, c.total_steps)
_, created, _ = state.create(c, tx, mesh)
out = {name: [str(leaf.sharding.spec), list(leaf.addressable_shards[0].data.shape), len(leaf.sharding.device_set)]
       for name, leaf in trees.flatten(created).items()}
print(json.dumps(out), flush=True)
for workdir, overrides in json.loads(sys.argv[1]).items():
  train.train_and_evaluate(main_config(*overrides), workdir)
"""

STEPS = ["--config.total_steps=3", "--config.log_every=1", "--config.eval_every=3",
         "--config.augment.mixup=0.4", "--config.augment.mixup_group=4", "--config.optimizer.label_smoothing=0.1"]
TA = ("--config.model.consensus=temporal_attention", "--config.model.num_frames=8", "--config.model.shift_segment=2")
# the blocks as one scan (remat dots): the same numbers as the loop, so compared with the loop on one device
SCANNED = ("--config.model.scan_layers=True", "--config.model.remat_policy=dots")
# {name: ((data, fsdp, frames, tensor), model overrides)}; frames=4 splits the demo's 4 frames one a chip (avg
# head): X-ViT's mixing then crosses chips; and 8 frames two a chip under the temporal-attention head, mixed in
# segments of 2: each chip mixes its own segment
MESHES = {"dp2_fsdp4": ((2, 4, 1, 1), ()), "dp2_fsdp2_tp2": ((2, 2, 1, 2), ()), "dp2_frames4": ((2, 1, 4, 1), ()),
          "dp2_frames4_ta": ((2, 1, 4, 1), TA), "dp2_fsdp2_tp2_scanned": ((2, 2, 1, 2), SCANNED)}


@pytest.fixture(scope="module")
def on_8_devices(tmp_path_factory):
  """One process with 8 devices: (the state's placement, its stdout, the workdir of each of MESHES)."""
  root = tmp_path_factory.mktemp("sharded")
  runs = {str(root / name): [*STEPS, *model, *(f"--config.mesh.{axis}={n}" for axis, n in zip(sharding.AXES, sizes))]
          for name, (sizes, model) in MESHES.items()}
  result = subprocess.run([sys.executable, "-c", ON_8_DEVICES, json.dumps(runs)], cwd=REPO, env=cpu_env(8),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  placed = json.loads(result.stdout.splitlines()[0])
  return placed, result.stdout, {name: root / name for name in MESHES}


def test_state_is_created_sharded_on_eight_devices(on_8_devices):
  placed = on_8_devices[0]
  spec, shard, devices = placed["params/blocks/0/mlp/fc1/kernel"]
  assert spec == str(P("fsdp", "tensor")) and shard == [32, 128] and devices == 8
  spec, shard, _ = placed["opt_state/2/0/blocks/0/mlp/fc1/kernel"]  # the momentum: sharded alike
  assert spec == str(P("fsdp", "tensor")) and shard == [32, 128]
  assert placed["params/blocks/0/attn/proj/kernel"][1] == [32, 32]
  assert placed["params/blocks/0/norm1/scale"][1] == [64]  # replicated
  assert placed["params/pos_embed"][:2] == [str(P(None, None)), [17, 64]]  # 17x64 is below FSDP_MIN_SIZE


def test_sharded_training_equals_one_device(on_8_devices, tmp_path):
  """The same global batch on 1 device, on data=2 x fsdp=4, on data=2 x fsdp=2 x tensor=2 (also with the blocks
  scanned, remat dots, against the loop on 1 device) and on data=2 x frames=4: the same losses and parameters after 3 steps, and the same evaluation (its loss, of the logits
  of every eval view), within float32 reduction-order tolerance; mixup included, in groups of 4 rows of the global batch
  whatever the mesh (a group spans 4 devices on data=2 x fsdp=4)."""
  _, stdout, workdirs = on_8_devices
  for name, (sizes, _) in MESHES.items():
    mesh = " x ".join(f"{axis}={n}" for axis, n in zip(sharding.AXES, sizes))
    assert f"8 device(s) in 1 process(es), mesh {mesh}" in stdout, name
  unscanned = lambda model: tuple(arg for arg in model if arg not in SCANNED)
  for model in dict.fromkeys(unscanned(model) for _, model in MESHES.values()):
    single, _ = train_main(tmp_path / str(len(model)), *STEPS, *model)  # this process: one device
    assert "1 device(s)" in single and "mesh data=1 x fsdp=1 x frames=1 x tensor=1" in single
    start = nnx.to_pure_dict(nnx.state(create_model(main_config(*model).model, seed=0), nnx.Param))
    params = final_params(tmp_path / str(len(model)), main_config(*model).model)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(start)))
    assert moved > 1e-3, "three steps must move the parameters, or the comparison proves nothing"
    metrics = read_metrics(tmp_path / str(len(model)))
    for name, workdir in workdirs.items():
      if unscanned(MESHES[name][1]) != model:
        continue
      sharded = read_metrics(workdir)
      np.testing.assert_allclose([r["train/loss"] for r in sharded], [r["train/loss"] for r in metrics], rtol=1e-5)
      np.testing.assert_allclose(sharded[-1]["eval/loss"], metrics[-1]["eval/loss"], rtol=1e-5)
      assert sharded[-1]["eval/top1"] == metrics[-1]["eval/top1"]
      for a, b in zip(jax.tree.leaves(final_params(workdir, main_config(*model).model)), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _one_step(config, batch):
  """One train step from the initial state on one device, at the peak learning rate (no warmup)."""
  config.optimizer.warmup_steps = 0
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  graphdef, state, shardings = state_lib.create(config, tx, mesh)
  step = train.make_train_step(config, graphdef, tx, schedule, shardings=shardings)
  state, metrics = step(state, batch)
  return jax.device_get(nnx.to_pure_dict(state["params"])), jax.device_get(metrics), jax.device_get(state["opt_state"])


def _batch(config, size=8):
  m = config.model
  video = jax.random.randint(jax.random.key(3), (size, m.num_frames, m.image_size, m.image_size, 3), 0, 256, jnp.uint8)
  return {"video": video, "label": jnp.arange(size) % m.num_classes}


@pytest.fixture(scope="module")
def float32_step():
  """One float32 step of tiny_config() on the whole batch: (params, metrics, opt_state)."""
  config = tiny_config()
  return _one_step(config, _batch(config))


def test_gradient_accumulation_equals_the_whole_batch(float32_step):
  params_whole, metrics_whole, _ = float32_step
  start = jax.device_get(nnx.to_pure_dict(nnx.state(create_model(tiny_config().model), nnx.Param)))
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params_whole), jax.tree.leaves(start)))
  for accum in (2, 4):
    split = tiny_config()
    split.grad_accum_steps = accum
    params_split, metrics_split, _ = _one_step(split, _batch(split))
    np.testing.assert_allclose(metrics_split["train/loss"], metrics_whole["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics_split["train/accuracy"], metrics_whole["train/accuracy"])
    np.testing.assert_allclose(metrics_split["train/grad_norm"], metrics_whole["train/grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(params_split), jax.tree.leaves(params_whole)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# 8 host devices: the train step of 4 alike blocks stored stacked (one scanned run) on data=1 x fsdp=4 x tensor=2,
# compiled; prints its argument bytes, the per-chip bytes of its state and batch, the per-chip bytes of the
# parameters and optimizer state stored stacked and block by block, and each kernel's whole and per-chip shape
SCANNED_ON_8_DEVICES = """
import json, sys
sys.path.insert(0, "tests")
import numpy as np
from conftest import tiny_config
from xvit_jax import optim, sharding, state, train, trees
from xvit_jax.tools import plan
per_chip = lambda leaf: int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
out = {}
for scan in (True, False):
  c = tiny_config(num_layers=4, hidden_size=128, num_heads=4, mlp_dim=512, num_frames=4, image_size=16,
                  scan_layers=scan)
  c.batch_size, c.augment.mixup_group = 8, 1
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 4, 2
  mesh = sharding.make_mesh(c.mesh)
  tx, schedule = optim.make_optimizer(c.optimizer, c.total_steps)
  graphdef, abstract, shardings = state.abstract(c, tx, mesh)
  out[f"stored/{scan}"] = sum(per_chip(leaf) for leaf in trees.flatten(abstract).values())
  out[f"kernels/{scan}"] = {name: [list(leaf.shape), list(leaf.sharding.shard_shape(leaf.shape))]
                            for name, leaf in trees.flatten(abstract["params"]).items()
                            if name.startswith(("stacks/", "blocks/")) and name.endswith("kernel")}
  if scan:
    batch = plan.train_batch(c, mesh)
    compiled = train.make_train_step(c, graphdef, tx, schedule, shardings=shardings).lower(abstract, batch).compile()
    out["arguments"] = int(compiled.memory_analysis().argument_size_in_bytes)
    out["per_chip"] = sum(per_chip(leaf) for leaf in trees.flatten({"s": abstract, "b": batch}).values())
print(json.dumps(out))
"""


def test_scanned_blocks_keep_their_parameters_sharded():
  """Blocks stored stacked (model.scan_layers) are placed as each block alone, their leading axis whole: the
  same per-chip bytes of parameters and optimizer state as stored block by block, and the step's arguments are
  that sharded state."""
  result = subprocess.run([sys.executable, "-c", SCANNED_ON_8_DEVICES], cwd=REPO, env=cpu_env(8),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.splitlines()[-1])
  assert out["arguments"] == out["per_chip"]
  assert out["stored/True"] == out["stored/False"]
  stacked, alone = out["kernels/True"], out["kernels/False"]
  assert len(stacked) == 4 and len(alone) == 16  # qkv, proj, fc1, fc2 of one run of 4 blocks; of each block
  for name, (whole, shard) in stacked.items():
    block = alone[name.replace("stacks/0/", "blocks/3/")]
    assert block[0] != block[1], name  # sharded, or the check proves nothing
    assert (whole, shard) == ([4] + block[0], [4] + block[1]), name


@pytest.mark.parametrize("scan_layers", [True, False])
def test_remat_gives_the_same_gradients_with_less_memory(scan_layers):
  """Every model.remat_policy, on the blocks scanned or looped over, gives the gradients of none; full keeps
  the least for the backward pass, dots (the dense layers' outputs) less than none; model.remat=True is full."""
  video = jax.random.normal(jax.random.key(1), (8, 4, 16, 16, 3))
  grads, temp = {}, {}
  for policy in REMAT_POLICIES:
    config = tiny_config(num_layers=3, droppath=0.3, dropout=0.2, scan_layers=scan_layers, remat_policy=policy)
    graphdef, params = nnx.split(create_model(config.model), nnx.Param)

    def loss(p, graphdef=graphdef):
      return nnx.merge(graphdef, p)(video, train=True, rngs=nnx.Rngs(dropout=5)).sum()

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    grads[policy], temp[policy] = compiled(params), compiled.memory_analysis().temp_size_in_bytes
  for policy in ("full", "dots"):  # recomputation reorders float32 sums: within 1e-6 of the largest gradient
    for a, b in zip(jax.tree.leaves(grads[policy]), jax.tree.leaves(grads["none"])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))
  assert temp["full"] < 0.6 * temp["none"], temp
  assert temp["full"] < temp["dots"] < temp["none"], temp
  assert remat_policy(tiny_config(remat=True).model) == "full"


def test_bfloat16_compute_keeps_float32_parameters_and_optimizer_state(float32_step):
  bf16 = tiny_config()
  bf16.dtype = "bfloat16"
  params_32, metrics_32, _ = float32_step
  params_16, metrics_16, opt_state_16 = _one_step(bf16, _batch(bf16))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params_16))
  moments = [leaf for leaf in jax.tree.leaves(opt_state_16) if np.issubdtype(leaf.dtype, np.floating)]
  assert len(moments) == len(jax.tree.leaves(params_16)), "one momentum buffer per parameter"
  assert all(leaf.dtype == np.float32 for leaf in moments)
  assert any(np.abs(leaf).max() > 0 for leaf in moments)  # the step wrote them
  assert abs(float(metrics_16["train/loss"]) - float(metrics_32["train/loss"])) < 0.05 * float(metrics_32["train/loss"])
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params_16), jax.tree.leaves(params_32)))
