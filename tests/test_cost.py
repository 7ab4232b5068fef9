"""The paper's cost claim, from XLA's cost analysis: mixing is free and linear in frames; joint is not."""

import pytest

from xvit_jax import config_lib
from xvit_jax.flops import forward_flops


def vit_b16(frames, attention):
  m = config_lib.base_config().model
  m.num_frames, m.attention, m.consensus = frames, attention, "avg"
  return m


@pytest.fixture(scope="module")
def gflops():
  return {(a, t): forward_flops(vit_b16(t, a)) / 1e9 for a in ("spatial", "xvit", "joint") for t in (8, 16)}


def test_space_time_mixing_costs_within_one_percent_of_spatial_attention(gflops):
  for frames in (8, 16):
    assert abs(gflops["xvit", frames] / gflops["spatial", frames] - 1) < 0.01


def test_vit_b16_per_frame_cost_matches_the_paper(gflops):
  # reference section 7: ~17.56 GMACs per frame, i.e. ~35.1 GFLOPs; paper: 425 GMACs for 8 frames x 3 views
  assert 34.0 < gflops["xvit", 8] / 8 < 36.5
  assert 400 < gflops["xvit", 8] * 3 / 2 < 440


def test_xvit_is_linear_and_joint_attention_superlinear_in_frames(gflops):
  assert abs(gflops["xvit", 16] / gflops["xvit", 8] - 2) < 0.01
  assert gflops["joint", 16] / gflops["joint", 8] > 2.15
