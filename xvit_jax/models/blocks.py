"""Pre-LN transformer block shared by the backbone and the temporal-attention head."""

import jax
import jax.numpy as jnp
from flax import nnx

from xvit_jax import sharding
from xvit_jax.models.attention import DENSE_INIT, Attention, dense


def drop_path(x, rate, key):
  """Stochastic depth: drops the whole residual branch of a clip with probability `rate` (a float or a traced
  scalar, so blocks that differ only in their rate are one program under a scan); no key: the identity."""
  if key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Mlp(nnx.Module):
  """fc1 -> exact (erf) GELU -> fc2, as PyTorch's nn.GELU() in the official code."""

  def __init__(self, dim, hidden, *, dtype=None, rngs):
    self.fc1 = nnx.Linear(dim, hidden, kernel_init=DENSE_INIT, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, dim, kernel_init=DENSE_INIT, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return dense(self.fc2, nnx.gelu(dense(self.fc1, x), approximate=False))


class Block(nnx.Module):
  """x + attn(norm1(x)), then x + mlp(norm2(x)); tokens (B, T, N, C).

  attention: "xvit" and "spatial" attend within each frame (xvit with `mix` set mixes k and v across
  frames), "joint" attends over the whole clip, "divided" first attends over time at each position
  (TimeSformer: its own norm, attention and zero-initialised temporal_fc) and then within the frame.
  The drop-path rate is an argument, not an attribute, so the backbone's blocks differ only where their
  programs do (mixing or not) and runs of alike blocks can be scanned.
  """

  def __init__(self, dim, num_heads, mlp_dim, *, attention="spatial", mix=None, summary_tokens=0,
               qkv_bias=True, eps=1e-6, attention_impl="xla", dtype=None, rngs):
    self.over = "clip" if attention == "joint" else "frame"
    self.mix = mix
    self.summary_tokens = summary_tokens
    norm = lambda: nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, rngs=rngs)
    if attention == "divided":
      self.temporal_norm = norm()
      self.temporal_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, implementation=attention_impl, dtype=dtype,
                                     rngs=rngs)
      zeros = jax.nn.initializers.zeros
      self.temporal_fc = nnx.Linear(dim, dim, kernel_init=zeros, dtype=dtype, rngs=rngs)
    self.divided = attention == "divided"
    self.norm1 = norm()
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, implementation=attention_impl, dtype=dtype, rngs=rngs)
    self.norm2 = norm()
    self.mlp = Mlp(dim, mlp_dim, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, droppath=0.0, key=None):
    """`key` (training with drop path): each residual branch drops with probability `droppath`, its own key
    split from `key`; None: no drop path."""
    x = sharding.split_frames(x, None, None)  # (B, T, N, C): the residual stream whole on each chip of a group
    keys = iter(jax.random.split(key, 3) if key is not None else [None] * 3)
    residual = lambda y: drop_path(y, droppath, next(keys))
    if self.divided:
      x = x + residual(dense(self.temporal_fc, self.temporal_attn(self.temporal_norm(x), over="time")))
    x = x + residual(self.attn(self.norm1(x), over=self.over, mix=self.mix, summary_tokens=self.summary_tokens))
    return x + residual(self.mlp(self.norm2(x)))
