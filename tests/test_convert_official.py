"""Official PyTorch X-ViT weights in and out: logits equal the official forward (independent numpy
transcription, tests/official_numpy.py) within 1e-4 of the largest logit; export round-trips exactly."""

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import load_config, tiny_config
from official_numpy import official_forward, random_official_state_dict
from xvit_jax.convert import official
from xvit_jax.errors import UserError
from xvit_jax.models import create_model


def model_from_official(cfg, state_dict):
  model = create_model(cfg.model)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, official.import_params(state_dict, cfg.model, nnx.to_pure_dict(state)))
  nnx.update(model, state)
  return model


def assert_parity(cfg, state_dict, clips=2, seed=0):
  m = cfg.model
  video = np.random.default_rng(seed).uniform(-1, 1, (clips, m.num_frames, m.image_size, m.image_size, 3))
  ours = np.asarray(model_from_official(cfg, state_dict)(video.astype(np.float32)))
  theirs = official_forward(state_dict, video.transpose(0, 4, 1, 2, 3), num_segments=m.shift_segment or m.num_frames,
                            shift_div=m.shift_div, heads=m.num_heads,
                            consensus="avg" if m.consensus == "avg" else "vit")
  assert ours.shape == theirs.shape
  assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max(), np.abs(ours - theirs).max()


def small(frames=8, segment=None, shift_div=4, consensus="temporal_attention", **model):
  cfg = tiny_config(hidden_size=32, num_heads=4, mlp_dim=128, num_layers=2, patch_size=8, image_size=32,
                    num_frames=frames, shift_segment=segment, shift_div=shift_div, consensus=consensus,
                    temporal_embed_frames=8, temporal_embed_fold_batch=True, num_classes=5, **model)
  sd = random_official_state_dict(num_classes=5, hidden=32, depth=2, heads=4, patch=8, image_size=32, seed=1)
  return cfg, sd


@pytest.mark.parametrize("frames,segment,shift_div", [(8, None, 4), (16, 8, 8), (16, None, 4), (4, None, 4)])
def test_small_configs_match_the_official_forward(frames, segment, shift_div):
  assert_parity(*small(frames, segment, shift_div))


def test_avg_consensus_matches_new_fc_averaged_over_frames():
  cfg, sd = small(consensus="avg")
  assert_parity(cfg, {k: v for k, v in sd.items() if not k.startswith("consensus.")})  # no VitHead built


@pytest.mark.slow  # ViT-B/16 x 16 frames through the float64 numpy reference: about a minute each
@pytest.mark.parametrize("path,num_classes", [("configs/official/k600_xvit_b16.py", 600),
                                              ("configs/official/ssv2_xvit_b16.py", 174)])
def test_released_model_configs_match_the_official_forward(path, num_classes):
  cfg = load_config(path)
  assert_parity(cfg, random_official_state_dict(num_classes=num_classes, seed=2), clips=1)


def test_export_then_import_round_trips_exactly():
  cfg, sd = small(16, 8, 8)
  model = model_from_official(cfg, sd)
  exported = official.export_state_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg.model)
  expected = {k: v for k, v in sd.items() if not k.startswith("new_fc")}
  assert set(exported) == set(expected)
  for key in expected:
    np.testing.assert_array_equal(exported[key], expected[key], err_msg=key)
  again = model_from_official(cfg, {"model_state": {f"module.{k}": v for k, v in exported.items()}})
  for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param))):
    np.testing.assert_array_equal(a, b)


def test_a_model_that_stores_its_blocks_stacked_imports_and_exports_the_same_weights():
  """model.scan_layers stores the blocks stacked (`stacks/0`, a leading axis of 2): the official per-block weights
  go in with parity and come out exactly."""
  cfg, sd = small(16, 8, 8, scan_layers=True)
  assert_parity(cfg, sd)
  params = nnx.to_pure_dict(nnx.state(model_from_official(cfg, sd), nnx.Param))
  assert params["stacks"][0]["attn"]["qkv"]["kernel"].shape == (2, 32, 3, 4, 8) and "blocks" not in params
  exported = official.export_state_dict(params, cfg.model)
  for key, value in sd.items():
    if not key.startswith("new_fc"):
      np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_a_checkpoint_that_does_not_fit_names_the_parameter_and_both_shapes():
  cfg, sd = small()
  expected = nnx.to_pure_dict(nnx.state(create_model(cfg.model), nnx.Param))
  wrong = dict(sd, **{"base_model.blocks.1.mlp.fc1.weight": np.zeros((64, 32), np.float32)})
  with pytest.raises(UserError, match=r"base_model\.blocks\.1\.mlp\.fc1\.weight has shape \(64, 32\).*"
                                      r"blocks/1/mlp/fc1/kernel of shape \(32, 128\)"):
    official.import_params(wrong, cfg.model, expected)
  partial = {k: v for k, v in sd.items() if k != "base_model.norm.bias"}
  partial["base_model.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(UserError, match=r"missing keys \['base_model.norm.bias'\]; unexpected keys \['base_model.extra.weight'\]"):
    official.import_params(partial, cfg.model, expected)
