"""Attention over video tokens: X-ViT space-time mixing, spatial-only, joint and divided.

Token layout everywhere: (B, T, N, C): clips, frames, tokens per frame (the frame's CLS first),
channels. Channels of q, k and v are head-major, c = h * head_dim + d, as in the official code, so a
channel slice of `fold` channels may cover whole heads (reference section 2.1).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xvit_jax import sharding

ATTENTION_TYPES = ("xvit", "spatial", "joint", "divided")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")  # jax.nn.dot_product_attention's `implementation`
# Dense kernels start as in the original ViT (Xavier-uniform): scaled by width, so even a small model's
# attention is far from uniform at step 0. Imported weights replace it anyway.
DENSE_INIT = jax.nn.initializers.xavier_uniform()


def dense(layer, x):
  """`layer` (an nnx.Linear) on the last axis of x, for a CPU with the leading axes flattened: the same numbers,
  but every gradient matmul is then 2-D, which XLA's CPU backend runs about 3x faster in bfloat16 (a
  contraction over several axes falls off its fast path; measured in BENCHMARKS.md). Not for other platforms
  (sharding.traced_platform): on a TPU the flattened layers' step keeps far more memory (ViT-B/16 with one
  512-frame clip a chip: 15.9 GiB of temporaries instead of 9.0, BENCHMARKS.md); nor with frames split over
  chips (sharding.split_frames), where flattening would gather them."""
  if sharding.traced_frames() > 1 or sharding.traced_platform() != "cpu":
    return layer(x)
  y = layer(x.reshape(-1, x.shape[-1]))
  return y.reshape(*x.shape[:-1], *y.shape[1:])  # the layer's output axes kept: the qkv Einsum's (3, H, D)


def heads_split():
  """Whether this trace splits the attention heads over chips (the mesh's `tensor` axis > 1): then q, k and v
  keep their (H, D) channel axes and space_time_mix selects per channel; else channels are one axis, sliced."""
  return sharding.traced_size("tensor") > 1


def space_time_mix(x, *, fold, segment, window=1):
  """Paper eqs. 8-9: frame t's keys (or values) take channel slices from its neighbour frames.

  x: (B, T, N, C) or (B, T, N, H, D), channel c = h * D + d (head-major, as the official code). Consecutive
  groups of `fold` channels come, in order, from frames t+1, t-1, t+2, t-2, ..., t+window, t-window (for window 1
  exactly the official layout: [0, fold) from t+1, [fold, 2 fold) from t-1); the other channels stay at t.
  Frames are cut into independent segments of `segment` frames and a neighbour outside the segment gives
  zeros. All tokens move, the CLS included. Queries are never mixed.

  Where the heads are split over chips (the mesh's `tensor` axis, traced_over), each group is a per-channel
  select between x and x shifted along time, never a slice and concatenation of channels: the select is local
  on every device whatever splits the heads, and only the shift along time moves data (between devices only
  when the frames are split). A group may cover part of a head (the official K600 model mixes 96 channels of
  64-channel heads), which whole-head slicing could not. Otherwise each group's channels are sliced, shifted
  and concatenated with the rest, with q, k and v kept as (B, T, N, C) (Attention): only 2 * window * fold
  channels of C are shifted, where the select shifts them all. Twelve X-ViT-B/16 blocks at 512 frames on a v5e
  frames=4 slice keep 5.13 GiB of temporaries this way, 5.43 with the select (BENCHMARKS.md, "Frames across
  chips"). The two give the same numbers. (Cutting T into segments to shift within them, which needs no halo
  from the next chip, kept 11.67 GiB there.)
  """
  if fold == 0:
    return x
  mix = _mix_by_select if heads_split() else _mix_by_slices
  return mix(x, [sign * step for step in range(1, window + 1) for sign in (1, -1)], fold, segment)


def _mix_by_slices(x, offsets, fold, segment):
  """space_time_mix as slices of channels shifted along time and concatenated."""
  flat = x.reshape(*x.shape[:3], -1)  # channels as one axis: (H, D) pads on TPUs
  groups = []
  for i, offset in enumerate(offsets):
    shifted, inside = _from_frame(flat[..., i * fold:(i + 1) * fold], offset, segment)
    groups.append(shifted if inside is None else jnp.where(inside, shifted, jnp.zeros((), x.dtype)))
  return jnp.concatenate(groups + [flat[..., len(offsets) * fold:]], axis=-1).reshape(x.shape)


def _mix_by_select(x, offsets, fold, segment):
  """space_time_mix as per-channel selects between x and x shifted along time."""
  channel = jnp.arange(np.prod(x.shape[3:])).reshape(x.shape[3:])  # (C,) or (H, D)
  out = x
  for i, offset in enumerate(offsets):
    taken = (channel >= i * fold) & (channel < (i + 1) * fold)  # broadcast over (B, T, N)
    shifted, inside = _from_frame(x, offset, segment)
    if inside is not None:  # frames whose neighbour lies outside their segment take zeros
      out = jnp.where(taken & ~inside, jnp.zeros((), x.dtype), out)
      taken = taken & inside
    out = jnp.where(taken, shifted, out)
  return out


def _from_frame(x, offset, segment):
  """(x shifted along the frames axis 1, out[:, t] = x[:, t + offset] with zeros past the ends; the (1, T, 1, ...)
  mask of the frames whose t + offset lies in t's segment of `segment` frames, or None when that is every frame
  the shift leaves non-zero). A shift along T and a static mask over T, never a reshape of T into segments:
  with the frames split over chips (mesh.frames) the shift is a halo exchange with the next chip, and nothing
  else moves."""
  t = x.shape[1]
  if abs(offset) >= min(segment, t):
    return jnp.zeros_like(x), None
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, offset) if offset > 0 else (-offset, 0)
  shifted = sharding.split_frames(jnp.pad(x[:, offset:] if offset > 0 else x[:, :offset], pad))
  if segment >= t:  # one segment: the padding's zeros are the only frames outside it
    return shifted, None
  source = np.arange(t) % segment + offset  # the neighbour's position in t's segment (static)
  inside = ((source >= 0) & (source < segment)).reshape(1, t, *[1] * (x.ndim - 2))
  return shifted, inside


def summaries(x, count):
  """Paper section 3 "summary token": `count` tokens per frame, each the mean of a contiguous run of
  the frame's tokens (count=1: the spatial mean of all S+1 tokens). (B, T, N, ...) -> (B, T*count, ...)."""
  b, t, n = x.shape[:3]
  bounds = [round(i * n / count) for i in range(count + 1)]
  pooled = [x[:, :, lo:hi].mean(axis=2) for lo, hi in zip(bounds[:-1], bounds[1:])]
  return jnp.stack(pooled, axis=2).reshape(b, t * count, *x.shape[3:])


def dot_product_attention(q, k, v, implementation="xla"):
  """softmax(q k^T / sqrt(d)) v, the softmax in float32. q: (B, ..., Q, H, D), k and v: (B, ..., K, H, D) ->
  (B, ..., Q, H, D).

  `xla`: the logits in the inputs' dtype (bfloat16 when training in it), the softmax in float32, the weights
  cast back: jax.nn.dot_product_attention's xla path makes the (..., H, Q, K) logits float32, twice the bytes
  of the largest activations of a frame's attention (one X-ViT-B/16 block at 256 frames on a v5e frames=4
  slice: 3.30 GiB of temporaries against 2.31; BENCHMARKS.md, "Frames across chips"). In float32 the two are
  the same numbers. `cudnn`: jax.nn.dot_product_attention's cuDNN fused (flash-style) kernel on GPUs, the
  axes between B and Q mapped over (vmap), not merged into B: B and T split over different mesh axes cannot
  be merged without a gather."""
  if implementation == "xla":
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k) * q.shape[-1] ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("...hqk,...khd->...qhd", weights, v)
  attend = functools.partial(jax.nn.dot_product_attention, implementation=implementation)
  for _ in range(q.ndim - 4):
    attend = jax.vmap(attend, in_axes=1, out_axes=1)
  return attend(q, k, v)


class Attention(nnx.Module):
  """Multi-head self-attention over (B, T, N, C) tokens.

  `over` picks the tokens that attend to each other: "frame" (the N tokens of one frame; spatial and
  X-ViT), "clip" (all T*N tokens; joint) or "time" (the T tokens at one position; the temporal half of
  divided attention). `mix` = (fold, segment, window) applies space_time_mix to k and v.

  The qkv kernel is (C, 3, H, D): q, k and v, head by head. Splitting H over the mesh's `tensor` axis gives
  each device whole heads of all three, so attention needs no communication and the output projection (its
  rows head-major, split the same way) one all-reduce: Megatron's layout. It is the official (3C, C) qkv
  weight transposed and reshaped (convert/official.py); checkpoints of the older (C, 3C) kernel are
  reshaped on restore (checkpoints.py).
  """

  def __init__(self, dim, num_heads, *, qkv_bias=True, implementation="xla", dtype=None, rngs):
    self.num_heads = num_heads
    self.implementation = implementation
    head_dim = dim // num_heads
    # fan-in C, fan-out 3C: the Xavier-uniform of the (C, 3C) projection, and with the same draws
    init = jax.nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3))
    self.qkv = nnx.Einsum("...c,cshd->...shd", (dim, 3, num_heads, head_dim),
                          (3, num_heads, head_dim) if qkv_bias else None, kernel_init=init, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, kernel_init=DENSE_INIT, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, over="frame", mix=None, summary_tokens=0):
    b, t, n, c = x.shape
    qkv = sharding.split_frames(dense(self.qkv, x))  # (B, T, N, 3, H, D)
    if not heads_split():  # channels as one axis, as the mixing slices them: (H, D) pads on TPUs
      qkv = qkv.reshape(*qkv.shape[:4], -1)
    q, k, v = (sharding.split_frames(qkv[:, :, :, i]) for i in range(3))  # each (B, T, N, C) or (B, T, N, H, D)
    if summary_tokens:  # every frame also attends to the summaries of all frames (unmixed)
      extra_k, extra_v = (jnp.broadcast_to(summaries(y, summary_tokens)[:, None],
                                           (b, t, t * summary_tokens, *y.shape[3:])) for y in (k, v))
    if mix is not None:
      fold, segment, window = mix
      k = space_time_mix(k, fold=fold, segment=segment, window=window)
      v = space_time_mix(v, fold=fold, segment=segment, window=window)
    if summary_tokens:
      k, v = jnp.concatenate([k, extra_k], axis=2), jnp.concatenate([v, extra_v], axis=2)

    q, k, v = (y.reshape(*y.shape[:3], self.num_heads, -1) for y in (q, k, v))  # (B, T, N(+summaries), H, D)
    attend = lambda q, k, v: dot_product_attention(q, k, v, self.implementation)
    if over == "frame":
      out = attend(q, k, v)  # (B, T, N, H, D)
    elif over == "clip":
      flat = lambda y: y.reshape(b, t * n, *y.shape[3:])
      out = attend(flat(q), flat(k), flat(v))  # (B, T*N, H, D)
    elif over == "time":
      out = attend(q.swapaxes(1, 2), k.swapaxes(1, 2), v.swapaxes(1, 2)).swapaxes(1, 2)
    else:
      raise ValueError(f"unknown attention pattern {over!r}")
    return dense(self.proj, out.reshape(b, t, n, c))
