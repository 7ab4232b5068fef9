"""What the train step moves between chips, counted in the program the XLA TPU compiler makes for a TPU slice
(libtpu, on this CPU machine): X-ViT's space-time mixing moves nothing that spatial attention does not, on
meshes with data, fsdp and tensor axes; nothing is reshuffled (no all-to-all); and a tensor axis costs
all-reduces only (Megatron's layout: whole heads per chip), never a collective-permute."""

import json
import subprocess
import sys

from conftest import REPO, cpu_env

TOPOLOGY = "v5e:2x4"
MESHES = ({"data": 8}, {"data": 2, "tensor": 4}, {"data": 2, "fsdp": 2, "tensor": 2})


def count(attention, mesh):
  """{collective: count} in the compiled train step of a one-block model whose mixing takes half a head from
  each neighbour frame (8 of 16 channels; the official K600 model takes 1.5 heads)."""
  from xvit_jax import config_lib  # pylint: disable=import-outside-toplevel
  from xvit_jax.tools import plan  # pylint: disable=import-outside-toplevel
  c = config_lib.base_config()
  c.batch_size, c.dtype, c.eval_every = 8, "bfloat16", 0
  m = c.model
  m.image_size, m.patch_size, m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 16, 8, 64, 4, 128, 1
  m.num_frames, m.num_classes, m.attention, m.shift_div = 8, 10, attention, 8
  c.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **mesh})
  _, _, devices, _ = plan.slice_devices(TOPOLOGY)
  steps = plan.compile_steps(c, devices, with_eval=False)
  return plan.collectives(steps["train"].as_text())


def test_mixing_costs_no_communication_and_tensor_parallelism_only_all_reduces():
  result = subprocess.run([sys.executable, __file__], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=cpu_env())  # libtpu loaded once for the six compiles
  assert result.returncode == 0, result.stderr[-3000:]
  counts = json.loads(result.stdout.strip().splitlines()[-1])
  for key, by_attention in counts.items():
    mesh, xvit, spatial = json.loads(key), by_attention["xvit"], by_attention["spatial"]
    assert xvit == spatial, f"{key}: {by_attention}"
    assert spatial["all-to-all"] == 0, key  # the token stream stays on the batch axes (sharding.split_frames)
    if mesh.get("tensor", 1) > 1:  # Megatron: whole heads per chip, one all-reduce after each row-split layer
      assert spatial["collective-permute"] == 0, key
      assert spatial["all-reduce"] > counts[json.dumps({"data": 8})]["spatial"]["all-reduce"], key
  data = counts[json.dumps({"data": 8})]["xvit"]  # data parallelism: the gradients' all-reduces, nothing else
  assert data == {**dict.fromkeys(data, 0), "all-reduce": data["all-reduce"]}


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  print(json.dumps({json.dumps(mesh): {a: count(a, mesh) for a in ("xvit", "spatial")} for mesh in MESHES}))
