"""Sharding over a data/fsdp/tensor mesh, gradient accumulation, remat and mixed precision: each gives
the training an unsharded float32 step gives, on real multi-device meshes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from conftest import REPO, tiny_config
from test_main import read_metrics, run_main
from xvit_jax import checkpoints, optim, sharding, train
from xvit_jax import state as state_lib
from xvit_jax.errors import UserError
from xvit_jax.models import abstract_params, create_model

MESH = AbstractMesh((2, 4, 2), sharding.AXES)


@pytest.mark.parametrize("name,shape,spec", [
    ("blocks/0/attn/qkv/kernel", (768, 2304), P("fsdp", "tensor")),
    ("blocks/0/attn/qkv/bias", (2304,), P("tensor")),
    ("blocks/0/attn/proj/kernel", (768, 768), P("tensor", "fsdp")),
    ("blocks/0/mlp/fc1/kernel", (768, 3072), P("fsdp", "tensor")),
    ("blocks/0/mlp/fc2/kernel", (3072, 768), P("tensor", "fsdp")),
    ("blocks/0/temporal_attn/qkv/kernel", (768, 2304), P("fsdp", "tensor")),
    ("head/encoder/0/attn/qkv/kernel", (768, 2304), P("fsdp", "tensor")),
    ("opt_state/2/0/blocks/3/mlp/fc1/kernel", (768, 3072), P("fsdp", "tensor")),  # momentum follows its parameter
    ("patch_embed/kernel", (16, 16, 3, 768), P(None, None, None, "fsdp")),
    ("pos_embed", (197, 768), P(None, "fsdp")),
    ("head/fc2/kernel", (768, 174), P("fsdp", None)),
    ("blocks/0/mlp/fc1/bias", (3072,), P("tensor")),
    ("blocks/0/norm1/scale", (768,), P(None)),  # small: replicated
    ("blocks/0/attn/qkv/kernel", (30, 90), P(None, "tensor")),  # fsdp=4 does not divide 30: dropped
    ("step", (), P()),
])
def test_rules_place_each_parameter(name, shape, spec):
  assert sharding.spec_for(name, shape, MESH) == spec


def test_mesh_sizes_resolve_and_mismatches_name_the_numbers():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert sharding.mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == {"data": 1, "fsdp": 4, "tensor": 2}
  with pytest.raises(UserError, match=r"config.mesh data=2 fsdp=4 tensor=2 needs 16 devices, there are 8"):
    sharding.mesh_shape({"data": 2, "fsdp": 4, "tensor": 2}, 8)


STATE_ON_8_DEVICES = """
import json, sys
sys.path.insert(0, "tests")
import jax
from conftest import tiny_config
from xvit_jax import optim, sharding, state, trees
c = tiny_config(num_layers=1, hidden_size=64, num_heads=4, mlp_dim=256, num_frames=4, image_size=32)
c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
mesh = sharding.make_mesh(c.mesh)
tx, _ = optim.make_optimizer(c.optimizer, c.total_steps)
_, created, _ = state.create(c, tx, mesh)
out = {name: [str(leaf.sharding.spec), list(leaf.addressable_shards[0].data.shape), len(leaf.sharding.device_set)]
       for name, leaf in trees.flatten(created).items()}
print(json.dumps(out))
"""


def test_state_is_created_sharded_on_eight_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", STATE_ON_8_DEVICES], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  placed = json.loads(result.stdout.strip().splitlines()[-1])
  spec, shard, devices = placed["params/blocks/0/mlp/fc1/kernel"]
  assert spec == str(P("fsdp", "tensor")) and shard == [32, 128] and devices == 8
  spec, shard, _ = placed["opt_state/2/0/blocks/0/mlp/fc1/kernel"]  # the momentum: sharded alike
  assert spec == str(P("fsdp", "tensor")) and shard == [32, 128]
  assert placed["params/blocks/0/attn/proj/kernel"][1] == [32, 32]
  assert placed["params/blocks/0/norm1/scale"][1] == [64]  # replicated
  assert placed["params/pos_embed"][:2] == [str(P(None, None)), [17, 64]]  # 17x64 is below FSDP_MIN_SIZE


def _demo_tiny_model():
  """config.model of configs/demo.py with test_main.TINY's overrides."""
  from configs import demo  # pylint: disable=import-outside-toplevel
  model = demo.get_config().model
  model.hidden_size, model.mlp_dim, model.num_layers, model.image_size, model.num_frames = 32, 64, 2, 16, 4
  return model


def _final_params(workdir):
  template = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract_params(_demo_tiny_model()))
  return checkpoints.latest_params(str(workdir), template)[1]


def test_sharded_training_equals_one_device(tmp_path):
  """The same global batch on 1 device, on data=2 x fsdp=4 and on data=2 x fsdp=2 x tensor=2: the same
  losses and parameters after 3 steps, within float32 reduction-order tolerance."""
  runs = {"1": ("1", "-1", "1", "1"), "dp2_fsdp4": ("8", "2", "4", "1"), "dp2_fsdp2_tp2": ("8", "2", "2", "2")}
  params, losses = {}, {}
  for name, (devices, data, fsdp, tensor) in runs.items():
    result = run_main(tmp_path / name, "--config.total_steps=3", "--config.log_every=1", "--config.eval_every=3",
                      f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}",
                      devices=int(devices))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"mesh data={data if data != '-1' else 1} x fsdp={fsdp} x tensor={tensor}" in result.stdout
    losses[name] = [r["train/loss"] for r in read_metrics(tmp_path / name)]
    params[name] = _final_params(tmp_path / name)
  start = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(create_model(
      _demo_tiny_model(), seed=0), nnx.Param)))
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params["1"]), jax.tree.leaves(start)))
  assert moved > 1e-3, "three steps must move the parameters, or the comparison proves nothing"
  for name in ("dp2_fsdp4", "dp2_fsdp2_tp2"):
    np.testing.assert_allclose(losses[name], losses["1"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params[name]), jax.tree.leaves(params["1"])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _one_step(config, batch):
  """One train step from the initial state on one device, at the peak learning rate (no warmup)."""
  config.optimizer.warmup_steps = 0
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  graphdef, state, shardings = state_lib.create(config, tx, mesh)
  step = train.make_train_step(config, graphdef, tx, schedule, shardings=shardings)
  state, metrics = step(state, batch)
  return jax.device_get(nnx.to_pure_dict(state["params"])), jax.device_get(metrics)


def _batch(config, size=8):
  m = config.model
  video = jax.random.normal(jax.random.key(3), (size, m.num_frames, m.image_size, m.image_size, 3))
  return {"video": video, "label": jnp.arange(size) % m.num_classes}


def test_gradient_accumulation_equals_the_whole_batch():
  whole = tiny_config()
  params_whole, metrics_whole = _one_step(whole, _batch(whole))
  start = jax.device_get(nnx.to_pure_dict(nnx.state(create_model(whole.model), nnx.Param)))
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params_whole), jax.tree.leaves(start)))
  for accum in (2, 4):
    split = tiny_config()
    split.grad_accum_steps = accum
    params_split, metrics_split = _one_step(split, _batch(split))
    np.testing.assert_allclose(metrics_split["train/loss"], metrics_whole["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics_split["train/accuracy"], metrics_whole["train/accuracy"])
    np.testing.assert_allclose(metrics_split["train/grad_norm"], metrics_whole["train/grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(params_split), jax.tree.leaves(params_whole)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_remat_gives_the_same_gradients_with_less_memory():
  video = jax.random.normal(jax.random.key(1), (8, 4, 16, 16, 3))
  grads, temp = {}, {}
  for remat in (False, True):
    config = tiny_config(num_layers=6, droppath=0.3, dropout=0.2, remat=remat)
    graphdef, params = nnx.split(create_model(config.model), nnx.Param)

    def loss(p, graphdef=graphdef):
      return nnx.merge(graphdef, p)(video, train=True, rngs=nnx.Rngs(dropout=5)).sum()

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    grads[remat], temp[remat] = compiled(params), compiled.memory_analysis().temp_size_in_bytes
  for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert temp[True] < 0.6 * temp[False], temp


def test_bfloat16_compute_keeps_float32_parameters_and_optimizer_state():
  f32, bf16 = tiny_config(), tiny_config()
  bf16.dtype = "bfloat16"
  params_32, metrics_32 = _one_step(f32, _batch(f32))
  params_16, metrics_16 = _one_step(bf16, _batch(bf16))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params_16))
  assert abs(float(metrics_16["train/loss"]) - float(metrics_32["train/loss"])) < 0.05 * float(metrics_32["train/loss"])
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params_16), jax.tree.leaves(params_32)))
