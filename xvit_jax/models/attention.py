"""Attention over video tokens: X-ViT space-time mixing, spatial-only, joint and divided.

Token layout everywhere: (B, T, N, C): clips, frames, tokens per frame (the frame's CLS first),
channels. Channels of q, k and v are head-major, c = h * head_dim + d, as in the official code, so a
channel slice of `fold` channels may cover whole heads (reference section 2.1).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from xvit_jax import sharding

ATTENTION_TYPES = ("xvit", "spatial", "joint", "divided")
# Dense kernels start as in the original ViT (Xavier-uniform): scaled by width, so even a small model's
# attention is far from uniform at step 0. Imported weights replace it anyway.
DENSE_INIT = jax.nn.initializers.xavier_uniform()


def dense(layer, x):
  """`layer` (an nnx.Linear) on the last axis of x with the leading axes flattened: the same numbers, but
  every gradient matmul is then 2-D, which XLA's CPU backend runs about 3x faster in bfloat16 (a
  contraction over several axes falls off its fast path; measured in BENCHMARKS.md). Not with frames split over
  chips (sharding.split_frames), where flattening would gather them."""
  if sharding.traced_frames() > 1:
    return layer(x)
  return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


def space_time_mix(x, *, fold, segment, window=1):
  """Paper eqs. 8-9: frame t's keys (or values) take channel slices from its neighbour frames.

  x: (B, T, N, C), channels head-major. Consecutive groups of `fold` channels come, in order, from
  frames t+1, t-1, t+2, t-2, ..., t+window, t-window (for window 1 exactly the official layout: [0, fold)
  from t+1, [fold, 2 fold) from t-1); the other channels stay at t. Frames are cut into independent
  segments of `segment` frames and a neighbour outside the segment gives zeros. All tokens move,
  the CLS included. Queries are never mixed.
  """
  if fold == 0:
    return x
  b, t, n, c = x.shape
  x = x.reshape(b, t // segment, segment, n, c)  # (B, T/segment, segment, N, C)
  offsets = [sign * step for step in range(1, window + 1) for sign in (1, -1)]
  groups = [_from_frame(x[..., i * fold:(i + 1) * fold], offset) for i, offset in enumerate(offsets)]
  groups.append(x[..., len(offsets) * fold:])
  return jnp.concatenate(groups, axis=-1).reshape(b, t, n, c)


def _from_frame(x, offset):
  """out[:, :, t] = x[:, :, t + offset] along the segment axis 2; zeros outside the segment."""
  frames = x.shape[2]
  if abs(offset) >= frames:
    return jnp.zeros_like(x)
  pad = [(0, 0)] * x.ndim
  if offset > 0:
    pad[2] = (0, offset)
    return jnp.pad(x[:, :, offset:], pad)
  pad[2] = (-offset, 0)
  return jnp.pad(x[:, :, :offset], pad)


def summaries(x, count):
  """Paper section 3 "summary token": `count` tokens per frame, each the mean of a contiguous run of
  the frame's tokens (count=1: the spatial mean of all S+1 tokens). (B, T, N, C) -> (B, T*count, C)."""
  b, t, n, c = x.shape
  bounds = [round(i * n / count) for i in range(count + 1)]
  pooled = [x[:, :, lo:hi].mean(axis=2) for lo, hi in zip(bounds[:-1], bounds[1:])]
  return jnp.stack(pooled, axis=2).reshape(b, t * count, c)


def dot_product_attention(q, k, v):
  """softmax(q k^T / sqrt(d)) v. q: (..., Q, H, D), k and v: (..., K, H, D) -> (..., Q, H, D)."""
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k) * q.shape[-1] ** -0.5
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("...hqk,...khd->...qhd", weights, v)


class Attention(nnx.Module):
  """Multi-head self-attention over (B, T, N, C) tokens.

  `over` picks the tokens that attend to each other: "frame" (the N tokens of one frame; spatial and
  X-ViT), "clip" (all T*N tokens; joint) or "time" (the T tokens at one position; the temporal half of
  divided attention). `mix` = (fold, segment, window) applies space_time_mix to k and v.
  """

  def __init__(self, dim, num_heads, *, qkv_bias=True, dtype=None, rngs):
    self.num_heads = num_heads
    # One projection whose outputs are [q | k | v], each head-major: the official layout.
    self.qkv = nnx.Linear(dim, 3 * dim, use_bias=qkv_bias, kernel_init=DENSE_INIT, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, kernel_init=DENSE_INIT, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, over="frame", mix=None, summary_tokens=0):
    b, t, n, c = x.shape
    q, k, v = jnp.split(dense(self.qkv, x), 3, axis=-1)  # each (B, T, N, C)
    if summary_tokens:  # every frame also attends to the summaries of all frames (unmixed)
      extra_k, extra_v = (jnp.broadcast_to(summaries(y, summary_tokens)[:, None], (b, t, t * summary_tokens, c))
                          for y in (k, v))
    if mix is not None:
      fold, segment, window = mix
      k = space_time_mix(k, fold=fold, segment=segment, window=window)
      v = space_time_mix(v, fold=fold, segment=segment, window=window)
    if summary_tokens:
      k, v = jnp.concatenate([k, extra_k], axis=2), jnp.concatenate([v, extra_v], axis=2)

    heads = lambda y: y.reshape(*y.shape[:-1], self.num_heads, c // self.num_heads)
    if over == "frame":
      out = dot_product_attention(heads(q), heads(k), heads(v))  # (B, T, N, H, D)
    elif over == "clip":
      flat = lambda y: heads(y.reshape(b, -1, c))
      out = dot_product_attention(flat(q), flat(k), flat(v))  # (B, T*N, H, D)
    elif over == "time":
      by_position = lambda y: heads(y.swapaxes(1, 2))
      out = dot_product_attention(by_position(q), by_position(k), by_position(v)).swapaxes(1, 2)
    else:
      raise ValueError(f"unknown attention pattern {over!r}")
    return dense(self.proj, out.reshape(b, t, n, c))
