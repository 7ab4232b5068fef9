"""The optimizer matches the official recipe (reference section 6)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from conftest import tiny_config
from xvit_jax import optim
from xvit_jax.models import create_model
from flax import nnx


def kinetics_recipe():
  return ml_collections.ConfigDict(dict(learning_rate=0.03, warmup_steps=500, warmup_start_lr=0.01, momentum=0.9,
                                        nesterov=True, weight_decay=1e-5, grad_clip=0.0))


def test_schedule_matches_the_reference_values():
  # 30 epochs of 100 steps, 5 warmup epochs from 0.01 to the cosine's value at epoch 5.
  schedule = optim.learning_rate_schedule(kinetics_recipe(), total_steps=3000)
  for epoch, lr in [(0, 0.0100), (2.5, 0.0190), (5, 0.0280), (15, 0.0150), (25, 0.0020), (30, 0.0)]:
    assert abs(float(schedule(epoch * 100)) - lr) < 1e-4, (epoch, float(schedule(epoch * 100)))


def test_weight_decay_spares_only_the_classifier_head_biases():
  cfg = tiny_config(consensus="temporal_attention")
  params = nnx.state(create_model(cfg.model), nnx.Param)
  flat = {"/".join(map(str, path)): bool(decays.get_value())
          for path, decays in nnx.to_flat_state(optim.decay_mask(params))}
  spared = sorted(path for path, decays in flat.items() if not decays)
  assert spared == ["head/fc1/bias", "head/fc2/bias", "head/norm/bias"]
  assert flat["head/encoder/0/attn/proj/bias"] and flat["pos_embed"] and flat["blocks/0/norm1/scale"]


def test_one_step_is_torch_nesterov_sgd_with_coupled_decay():
  cfg = kinetics_recipe()
  cfg.warmup_steps = 0
  tx, schedule = optim.make_optimizer(cfg, total_steps=10)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, 0.25])}
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  g = np.array([0.5, 0.25]) + 1e-5 * np.array([1.0, -2.0])  # decay added to the gradient first
  buf = g  # torch: first momentum buffer = g; nesterov step uses g + momentum * buf
  np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], np.array([1.0, -2.0]) - 0.03 * (g + 0.9 * buf),
                             rtol=1e-6)
