"""The X-ViT model end to end: variants, heads, embeddings, precision and cost."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from xvit_jax import layouts
from xvit_jax.flops import forward_flops
from xvit_jax.models import XViT, create_model


def logits_and_features(cfg, video, seed=0, dtype="float32"):
  model = create_model(cfg.model, dtype=dtype, seed=seed)
  return model(video), model.features(video)


def random_video(cfg, clips=2, seed=0):
  m = cfg.model
  return jax.random.uniform(jax.random.key(seed), (clips, m.num_frames, m.image_size, m.image_size, 3), minval=-1)


@pytest.mark.parametrize("attention", ["xvit", "spatial", "joint", "divided"])
@pytest.mark.parametrize("consensus", ["avg", "temporal_attention"])
def test_every_variant_gives_logits(attention, consensus):
  cfg = tiny_config(attention=attention, consensus=consensus)
  logits, features = logits_and_features(cfg, random_video(cfg))
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32
  assert features.shape == (2, 4, 32)
  assert np.all(np.isfinite(logits))


def test_xvit_that_mixes_no_channel_is_the_spatial_model():
  video = random_video(tiny_config())
  spatial, _ = logits_and_features(tiny_config(attention="spatial"), video)
  unmixed, _ = logits_and_features(tiny_config(attention="xvit", shift_div=33), video)  # fold = 32 // 33 = 0
  mixed, _ = logits_and_features(tiny_config(attention="xvit", shift_div=4), video)
  np.testing.assert_array_equal(unmixed, spatial)
  assert not np.allclose(mixed, spatial, atol=1e-4)


def frames_changed_by(cfg, frame):
  """Which frames' output features change when only `frame` of the input changes."""
  video = random_video(cfg, clips=1)
  other = video.at[:, frame].set(-video[:, frame])
  model = create_model(cfg.model, seed=0)
  for block in model.blocks:  # divided: TimeSformer's temporal_fc starts at zero; open the branch
    if block.divided:
      block.temporal_fc.kernel[...] = jnp.eye(block.temporal_fc.kernel.shape[0])
  delta = jnp.abs(model.features(video) - model.features(other)).max(axis=-1)[0]
  return [int(t) for t in np.nonzero(np.asarray(delta) > 1e-6)[0]]


def test_receptive_field_in_time_of_each_variant():
  one_layer = dict(num_layers=1, num_frames=8)
  assert frames_changed_by(tiny_config(attention="spatial", **one_layer), 4) == [4]
  assert frames_changed_by(tiny_config(attention="xvit", **one_layer), 4) == [3, 4, 5]
  assert frames_changed_by(tiny_config(attention="xvit", temporal_window=2, shift_div=8, **one_layer), 4) == [2, 3, 4, 5, 6]
  assert frames_changed_by(tiny_config(attention="xvit", num_layers=2, num_frames=8), 4) == [2, 3, 4, 5, 6]
  # segments of 4 frames: frame 3's change does not cross into frame 4
  assert frames_changed_by(tiny_config(attention="xvit", shift_segment=4, **one_layer), 3) == [2, 3]
  assert frames_changed_by(tiny_config(attention="xvit", shift_layers="none", **one_layer), 4) == [4]
  for global_attention in ("joint", "divided"):
    assert frames_changed_by(tiny_config(attention=global_attention, **one_layer), 4) == list(range(8))
  assert frames_changed_by(tiny_config(attention="spatial", summary_tokens=1, **one_layer), 4) == list(range(8))


def test_temporal_embedding_repeats_with_its_period():
  cfg = tiny_config(attention="spatial", num_frames=8, temporal_embed_frames=4)
  model = create_model(cfg.model, seed=0)
  model.temp_embed[...] = jax.random.normal(jax.random.key(3), model.temp_embed.shape)
  still = jnp.broadcast_to(random_video(cfg, clips=1)[:, :1], (1, 8, 16, 16, 3))  # the same frame 8 times
  f = model.features(still)[0]
  np.testing.assert_allclose(f[:4], f[4:], atol=1e-6)
  assert not np.allclose(f[0], f[1], atol=1e-4)


def test_temporal_attention_head_sees_frames_as_a_set():
  # No positional embedding in the head (official VitHead): frame order reaches it only via the backbone.
  cfg = tiny_config(consensus="temporal_attention")
  model = create_model(cfg.model, seed=0)
  frames = jax.random.normal(jax.random.key(0), (2, 4, 32))
  np.testing.assert_allclose(model.head(frames), model.head(frames[:, ::-1]), atol=1e-5)


def test_dropout_is_active_only_in_training():
  cfg = tiny_config(consensus="temporal_attention", dropout=0.5)
  model, video = create_model(cfg.model, seed=0), random_video(cfg)
  np.testing.assert_array_equal(model(video), model(video))
  a = model(video, train=True, rngs=nnx.Rngs(dropout=0))
  b = model(video, train=True, rngs=nnx.Rngs(dropout=1))
  assert not np.allclose(a, b)


def test_bfloat16_compute_stays_close_to_float32():
  cfg = tiny_config(attention="xvit", consensus="temporal_attention", num_layers=4)
  video = random_video(cfg, clips=4)
  f32, _ = logits_and_features(cfg, video)
  bf16, _ = logits_and_features(cfg, video, dtype="bfloat16")
  scale = float(jnp.abs(f32).max())
  assert float(jnp.abs(f32 - bf16).max()) < 0.05 * scale
  assert np.all(np.asarray(bf16.argmax(-1)) == np.asarray(f32.argmax(-1)))


def parameter_paths(cfg):
  state = nnx.state(create_model(cfg.model, seed=0), nnx.Param)
  return {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(state)}


def test_variants_share_all_parameters_but_the_temporal_branch():
  xvit, spatial, joint = (parameter_paths(tiny_config(attention=a)) for a in ("xvit", "spatial", "joint"))
  assert xvit == spatial == joint
  extra = parameter_paths(tiny_config(attention="divided")) - xvit
  assert extra and all("temporal_" in p for p in extra)


def test_the_model_takes_plain_hyperparameters_and_create_model_maps_the_config_onto_them():
  cfg = tiny_config(attention="xvit", consensus="temporal_attention", shift_layers="1", num_frames=8, shift_segment=4)
  video = random_video(cfg, clips=1)
  model = XViT(num_classes=3, image_size=16, patch_size=8, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
               attention="xvit", shift_div=4, shift_layers=(1,), shift_segment=4, temporal_window=1,
               temporal_embed_frames=8, temporal_embed_fold_batch=False, consensus="temporal_attention",
               summary_tokens=0, dropout=0.0, droppath=0.0, norm_eps=1e-6, head_num_layers=1,
               head_num_heads=4, head_mlp_dim=64, head_hidden_size=32, head_norm_eps=1e-5, rngs=nnx.Rngs(params=0))
  assert [block.mix for block in model.blocks] == [None, (8, 4, 1)]
  np.testing.assert_array_equal(model(video), create_model(cfg.model, seed=0)(video))


@pytest.mark.parametrize("attention,layers,shift_layers,loops", [
    ("xvit", 5, "1-2", 2), pytest.param("spatial", 3, "all", 1, marks=pytest.mark.slow),  # 16 s each
    pytest.param("divided", 3, "all", 1, marks=pytest.mark.slow)])
def test_scanned_blocks_give_the_numbers_of_the_loop(attention, layers, shift_layers, loops):
  """Each run of alike blocks scanned (X-ViT's 5 blocks mixing in 1 and 2: runs [0] [1 2] [3 4]) gives the
  loop's logits and, training with drop path and dropout, its gradients; the compiled forward holds one loop
  per scanned run: blocks whose drop-path rates differ share one."""
  video = random_video(tiny_config(), clips=2)
  out = {}
  for scan in (False, True):
    cfg = tiny_config(attention=attention, shift_layers=shift_layers, num_layers=layers, droppath=0.3, dropout=0.2,
                      consensus="temporal_attention", scan_layers=scan)
    graphdef, params = nnx.split(create_model(cfg.model, seed=0), nnx.Param)

    def loss(p, graphdef=graphdef):
      logits = nnx.merge(graphdef, p)(video, train=True, rngs=nnx.Rngs(dropout=7))
      return -jax.nn.log_softmax(logits)[:, 0].mean()

    forward = jax.jit(lambda p, graphdef=graphdef: nnx.merge(graphdef, p)(video)).lower(params).compile()
    out[scan] = forward(params), jax.jit(jax.grad(loss))(params), forward.as_text().count(" while(")
  np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
  grads = {scan: layouts.per_block(nnx.to_pure_dict(out[scan][1])) for scan in (False, True)}  # stacked: by block
  assert sorted(grads[True]) == sorted(grads[False])
  for name, unscanned in grads[False].items():
    # float32 sums in another order: within 5e-6 of the largest gradient of the leaf
    np.testing.assert_allclose(grads[True][name], unscanned, atol=5e-6 * float(np.abs(unscanned).max()), err_msg=name)
  assert (out[False][2], out[True][2]) == (0, loops)


def test_drop_path_acts_in_training_scanned_or_not():
  video = random_video(tiny_config(), clips=4)
  for scan in (False, True):
    model = create_model(tiny_config(num_layers=2, droppath=0.5, scan_layers=scan).model, seed=0)
    assert not np.allclose(model(video, train=True, rngs=nnx.Rngs(dropout=0)), model(video), atol=1e-4)


def test_model_flops_count_every_block_of_a_scanned_model():
  """XLA counts a loop's body once; the model FLOPs (flops.py, MFU's numerator) count every scanned block."""
  scanned, unscanned = (tiny_config(num_layers=4, scan_layers=scan).model for scan in (True, False))
  lowered_flops = lambda m: jax.jit(lambda v, model=create_model(m): model(v)).lower(random_video(tiny_config())
                                                                                     ).cost_analysis()["flops"]
  assert lowered_flops(scanned) < 0.6 * lowered_flops(unscanned)  # what the count would be without flops.py's care
  assert forward_flops(scanned, batch=2) == forward_flops(unscanned, batch=2) > 0
