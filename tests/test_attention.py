"""Space-time mixing and the attention variants, on the math directly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from official_numpy import shift_official
from xvit_jax.models.attention import Attention, dot_product_attention, space_time_mix, summaries


def source_frames(t, n, c, **kwargs):
  """Mixes an input whose every entry is its frame index + 1; returns the source frame of each
  output entry (0 where zero padding came in), shape (T, C) for the first token."""
  x = jnp.broadcast_to(jnp.arange(1, t + 1, dtype=jnp.float32)[None, :, None, None], (1, t, n, c))
  out = space_time_mix(x, **kwargs)
  assert np.all(out == out[:, :, :1]), "every token (the CLS included) must move the same way"
  return np.asarray(out[0, :, 0]).astype(int)


def test_worked_example_of_reference_section_2_2():
  # T=3, heads=2, head_dim=4, SHIFT_DIV=4 (fold 2), one segment. Rows: output frame; entries: the source
  # frame (1-based here) of channels c0..c7, 0 for zero padding.
  expected = np.array([
      [2, 2, 0, 0, 1, 1, 1, 1],
      [3, 3, 1, 1, 2, 2, 2, 2],
      [0, 0, 2, 2, 3, 3, 3, 3],
  ])
  np.testing.assert_array_equal(source_frames(3, 5, 8, fold=8 // 4, segment=3), expected)


@pytest.mark.parametrize("frames,segment,shift_div", [(16, 8, 8), (16, 16, 4), (8, 8, 4), (6, 3, 2)])
def test_mixing_equals_the_official_shift_on_random_keys(frames, segment, shift_div):
  heads, tokens, head_dim, clips = 4, 5, 8, 2
  k = np.random.default_rng(0).normal(size=(clips * frames, heads, tokens, head_dim)).astype(np.float32)
  official = shift_official(k, segment, shift_div)  # (B*T, H, N, Dh)
  ours = space_time_mix(jnp.asarray(k.transpose(0, 2, 1, 3).reshape(clips, frames, tokens, heads * head_dim)),
                        fold=heads * head_dim // shift_div, segment=segment)
  np.testing.assert_array_equal(np.asarray(ours).reshape(clips * frames, tokens, heads, head_dim).transpose(0, 2, 1, 3),
                                official)


def test_segments_are_independent():
  # 8 frames in two segments of 4: frame 3 gets zeros from "frame 4", frame 4 zeros from "frame 3".
  src = source_frames(8, 2, 8, fold=2, segment=4)
  assert list(src[:, 0]) == [2, 3, 4, 0, 6, 7, 8, 0]  # channels from t+1
  assert list(src[:, 2]) == [0, 1, 2, 3, 0, 5, 6, 7]  # channels from t-1
  assert list(src[:, 4]) == list(range(1, 9))


def test_wider_temporal_window_takes_channels_from_two_frames_away():
  src = source_frames(5, 1, 10, fold=2, segment=5, window=2)
  assert list(src[:, 0]) == [2, 3, 4, 5, 0]  # t+1
  assert list(src[:, 2]) == [0, 1, 2, 3, 4]  # t-1
  assert list(src[:, 4]) == [3, 4, 5, 0, 0]  # t+2
  assert list(src[:, 6]) == [0, 0, 1, 2, 3]  # t-2
  assert list(src[:, 8]) == [1, 2, 3, 4, 5]  # unchanged


def test_zero_fold_is_identity():
  x = jax.random.normal(jax.random.key(0), (2, 4, 3, 8))
  np.testing.assert_array_equal(space_time_mix(x, fold=0, segment=4), x)
  attention = Attention(8, 2, rngs=nnx.Rngs(0))  # through the layer: mixing 0 channels is no mixing
  unmixed = attention(x)
  np.testing.assert_array_equal(attention(x, mix=(0, 4, 1)), unmixed)
  assert not np.allclose(attention(x, mix=(2, 4, 1)), unmixed, atol=1e-4)  # 2 channels per neighbour do mix


def test_summaries_are_spatial_means():
  x = jax.random.normal(jax.random.key(1), (2, 3, 6, 4))
  np.testing.assert_allclose(summaries(x, 1), x.mean(axis=2), rtol=1e-6)
  two = summaries(x, 2).reshape(2, 3, 2, 4)
  np.testing.assert_allclose(two[:, :, 1], x[:, :, 3:].mean(axis=2), rtol=1e-6)


def test_dot_product_attention_matches_jax():
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 7, 3, 8)) for i in range(3))
  np.testing.assert_allclose(dot_product_attention(q, k, v), jax.nn.dot_product_attention(q, k, v), atol=1e-5)


@pytest.mark.parametrize("shape, fold, segment, window", [
    ((2, 16, 3, 4, 24), 12, 8, 1),  # 12 channels: half a head of 24
    ((1, 6, 2, 3, 4), 2, 3, 2), ((1, 4, 2, 16), 3, 2, 2),  # offsets past the segment
    ((1, 5, 2, 20), 4, 5, 3)])
def test_the_two_mixing_formulations_are_the_same_numbers(shape, fold, segment, window):
  """space_time_mix selects per channel where a mesh splits the heads (local on every chip) and slices channels
  elsewhere (fewer bytes shifted): bit for bit the same, in float32 and bfloat16, and so are their gradients."""
  from xvit_jax.models import attention  # pylint: disable=import-outside-toplevel
  offsets = [sign * step for step in range(1, window + 1) for sign in (1, -1)]
  x = jax.random.normal(jax.random.key(sum(shape)), shape)
  weights = jnp.arange(x.size, dtype=jnp.float32).reshape(shape)

  def outputs(mix):  # float32 and bfloat16 mixed, and the float32 gradient of a weighted sum
    run = lambda y: mix(y, offsets, fold, segment)
    return jax.jit(lambda y: (run(y), run(y.astype(jnp.bfloat16)), jax.grad(lambda z: jnp.sum(run(z) * weights))(y)))(x)

  for ours, theirs in zip(outputs(attention._mix_by_slices), outputs(attention._mix_by_select)):
    np.testing.assert_array_equal(ours, theirs)
  np.testing.assert_array_equal(space_time_mix(x, fold=fold, segment=segment, window=window),
                                attention._mix_by_slices(x, offsets, fold, segment))


def test_dense_layers_flatten_their_leading_axes_for_a_cpu_only():
  """attention.dense flattens (B, T, N) into one axis for XLA's CPU backend (2-D matmuls, its fast path), and not
  for a TPU (sharding.traced_platform: the platform of the mesh traced over, here a v5e slice described on this
  CPU machine), where the flattened layers' step keeps far more memory (BENCHMARKS.md)."""
  from xvit_jax import sharding  # pylint: disable=import-outside-toplevel
  from xvit_jax.models.attention import dense  # pylint: disable=import-outside-toplevel
  from xvit_jax.tools import plan  # pylint: disable=import-outside-toplevel
  layer = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
  tpu = plan.slice_devices("v5e:2x2")[2][:1]
  ranks = {}
  for devices in (jax.devices()[:1], tpu):
    mesh = sharding.make_mesh(devices=devices)
    jaxpr = jax.make_jaxpr(sharding.traced_over(mesh, lambda x: dense(layer, x)))(jnp.ones((2, 3, 5, 8)))
    dots = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "dot_general"]
    ranks[devices[0].platform] = [eqn.invars[0].aval.ndim for eqn in dots]
    assert jaxpr.out_avals[0].shape == (2, 3, 5, 16)
  assert ranks == {"cpu": [2], "tpu": [4]}
