"""Shared test helpers: tiny configs and a model factory."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import official_numpy as a plain module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**model):
  """The demo config shrunk further; keyword arguments override config.model fields."""
  from xvit_jax import config_lib
  c = config_lib.base_config()
  c.batch_size, c.total_steps, c.log_every, c.eval_every = 4, 4, 2, 0
  c.optimizer.warmup_steps = 1
  m = c.model
  m.image_size, m.patch_size, m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim = 16, 8, 32, 2, 4, 64
  m.num_frames, m.num_classes, m.dropout, m.consensus = 4, 3, 0.0, "avg"
  c.data.object_size, c.data.speed, c.data.eval_size = 4, 2.0, 8
  for key, value in model.items():
    m[key] = value
  return c


@pytest.fixture
def repo():
  return REPO


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long end-to-end checks (minutes); run with -m slow")
