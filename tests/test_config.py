"""Start-up checks: every bad value stops the run with one line naming the field."""

import subprocess
import sys

import pytest

from conftest import REPO, tiny_config
from xvit_jax import config_lib
from xvit_jax.errors import UserError

BAD = [
    ({"model.attention": "full"}, "config.model.attention='full'", "xvit, spatial, joint, divided"),
    ({"model.consensus": "max"}, "config.model.consensus='max'", "avg, temporal_attention"),
    ({"model.num_frames": 6, "model.shift_segment": 4}, "config.model.num_frames=6", "shift_segment=4"),
    ({"model.image_size": 20}, "config.model.image_size=20", "patch_size=8"),
    ({"batch_size": 6}, "config.batch_size=6", "mesh data=4 x fsdp=1 = 4 devices"),
    ({"model.hidden_size": 30}, "config.model.hidden_size=30", "num_heads=4"),
    ({"model.shift_div": 1}, "config.model.shift_div=1", "at least 2"),
    ({"model.shift_layers": "0,7"}, "config.model.shift_layers='0,7'", "0..1"),
    ({"model.shift_layers": "first"}, "config.model.shift_layers='first'", '"all"'),
    ({"model.summary_tokens": 1, "model.attention": "joint"}, "config.model.summary_tokens=1", "xvit or spatial"),
    ({"model.dropout": 1.5}, "config.model.dropout=1.5", "[0, 1)"),
    ({"model.num_frames": 0}, "config.model.num_frames=0", "positive integer"),
    ({"dtype": "float64"}, "config.dtype='float64'", "bfloat16"),
    ({"data.name": "kinetics"}, "config.data.name='kinetics'", "synthetic"),
    ({"optimizer.learning_rate": 0.0}, "config.optimizer.learning_rate=0.0", "positive"),
    ({"model.consensus": "temporal_attention", "model.head.num_heads": 5}, "config.model.head.num_heads=5", "divisor"),
    ({"eval.sampling": "uniform"}, "config.eval.sampling='uniform'", "dense, segment"),
    ({"eval.spatial_crops": 2}, "config.eval.spatial_crops=2", "1 or 3"),
    ({"eval.sampling": "segment", "eval.temporal_views": 4}, "config.eval.temporal_views=4", "1..3"),
    ({"data.label_names": "kinetics400"}, "config.data.label_names='kinetics400'", "kinetics600"),
    ({"data.label_names": "kinetics600"}, "config.data.label_names='kinetics600'", "num_classes=3 names (it has 600)"),
    ({"mesh.data": 2, "mesh.fsdp": 4}, "config.mesh data=2 fsdp=4 tensor=1", "needs 8 devices, there are 4"),
    ({"mesh.fsdp": 3}, "config.mesh data=-1 fsdp=3 tensor=1", "4 is not a multiple of 3"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "config.mesh data=-1 fsdp=-1 tensor=1", "at most one -1"),
    ({"mesh.data": 0}, "config.mesh data=0 fsdp=1 tensor=1", "sizes are positive"),
    ({"grad_accum_steps": 3}, "config.batch_size=4", "grad_accum_steps=3 micro-batches"),
    ({"grad_accum_steps": 0}, "config.grad_accum_steps=0", "positive integer"),
    ({"checkpoint_keep": 0}, "config.checkpoint_keep=0", "positive integer"),
    ({"optimizer.warmup_steps": 4}, "config.optimizer.warmup_steps=4", "fewer than total_steps=4"),
]


def with_overrides(overrides):
  c = tiny_config()
  for field, value in overrides.items():
    node = c
    *parents, leaf = field.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


@pytest.mark.parametrize("overrides,culprit,allowed", BAD)
def test_bad_values_are_named_in_one_line(overrides, culprit, allowed):
  with pytest.raises(UserError) as error:
    config_lib.check(with_overrides(overrides), num_devices=4)
  message = str(error.value)
  assert "\n" not in message
  assert culprit in message and allowed in message


def test_the_shipped_configs_pass():
  config_lib.check(tiny_config(), num_devices=4)
  config_lib.check(config_lib.base_config(), num_devices=8)


def test_main_prints_one_line_and_exits_2(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "xvit_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path}",
       "--config.model.attention=fancy"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert lines[-1] == ("error: config.model.attention='fancy' is not allowed: one of xvit, spatial, joint, divided")
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "checkpoints").exists()
