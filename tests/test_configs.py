"""Every shipped config loads and passes the start-up checks."""

import glob
import importlib.util
import os

import pytest

from conftest import REPO
from xvit_jax import config_lib


def load(path, arg=None):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)))
def test_config_passes_the_checks(path):
  config_lib.check(load(path), num_devices=8)


def test_paper_settings():
  k400, k400_8, ssv2 = load(f"{REPO}/configs/k400.py"), load(f"{REPO}/configs/k400.py", "8"), load(f"{REPO}/configs/ssv2.py")
  assert (k400.model.num_frames, k400.model.shift_segment, k400.model.shift_div) == (16, 8, 8)
  assert (k400_8.model.num_frames, k400_8.model.shift_segment) == (8, 8)
  assert (k400.augment.mixup, k400.optimizer.label_smoothing, k400.augment.flip) == (0.4, 0.3, 0.5)
  assert (ssv2.model.shift_segment, ssv2.model.shift_div, ssv2.augment.flip, ssv2.augment.random_erasing) == (16, 4, 0.0, 0.5)
  assert ssv2.eval.temporal_views * ssv2.eval.spatial_crops == 6
  assert k400.total_steps == 30 * (240_000 // 64) and k400.optimizer.warmup_steps == 5 * (240_000 // 64)


@pytest.mark.parametrize("name", ["k400", "k600", "ssv2", "epic100"])
def test_smoke_presets_are_tiny_and_valid(name):
  c = load(f"{REPO}/configs/{name}.py", "smoke")
  config_lib.check(c, num_devices=1)
  assert c.model.hidden_size == 32 and c.total_steps == 3 and c.data.name != "synthetic"
