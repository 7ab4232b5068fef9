"""How per-frame features become clip logits: average consensus or the temporal-attention head."""

import jax.numpy as jnp
from flax import nnx

from xvit_jax import sharding
from xvit_jax.models.attention import DENSE_INIT
from xvit_jax.models.blocks import Block

CONSENSUS_TYPES = ("avg", "temporal_attention")


class AvgConsensus(nnx.Module):
  """Dropout, one linear classifier per frame, logits averaged over frames (official `avg`, `new_fc`)."""

  def __init__(self, dim, num_classes, *, dropout=0.0, dtype=None, rngs):
    self.dropout = nnx.Dropout(dropout)
    self.fc = nnx.Linear(dim, num_classes, kernel_init=DENSE_INIT, dtype=dtype, rngs=rngs)

  def __call__(self, frames, *, train=False, rngs=None):  # frames: (B, T, C)
    return self.fc(self.dropout(frames, deterministic=not train, rngs=rngs)).mean(axis=1)


class TemporalAttentionHead(nnx.Module):
  """Paper's temporal attention (TA), as the official `VitHead` (reference section 3.1).

  A learned head CLS (zero-initialised) is prepended to the T per-frame features, with no positional
  embedding; `num_layers` blocks (no qkv bias, LayerNorm eps 1e-5) attend over these T+1 tokens, and
  the head CLS goes through LayerNorm -> Linear -> GELU -> Dropout -> Linear.
  """

  def __init__(self, dim, num_classes, *, num_heads, mlp_dim, head_mlp_dim, num_layers=1, dropout=0.0,
               eps=1e-5, attention_impl="xla", dtype=None, rngs):
    self.cls_token = nnx.Param(jnp.zeros((dim,)))
    self.dropout = nnx.Dropout(dropout)
    self.encoder = nnx.List([Block(dim, num_heads, mlp_dim, qkv_bias=False, eps=eps, attention_impl=attention_impl,
                                   dtype=dtype, rngs=rngs) for _ in range(num_layers)])
    self.norm = nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, rngs=rngs)
    self.fc1 = nnx.Linear(dim, head_mlp_dim, kernel_init=DENSE_INIT, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(head_mlp_dim, num_classes, kernel_init=DENSE_INIT, dtype=dtype, rngs=rngs)

  def __call__(self, frames, *, train=False, rngs=None):  # frames: (B, T, C)
    x = self.dropout(frames, deterministic=not train, rngs=rngs)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
    x = jnp.concatenate([cls, x], axis=1)[:, None]  # (B, 1, T+1, C): one "frame" of T+1 tokens
    for block in self.encoder:  # usually one layer: a loop, not a scan
      x = block(x)
    z = nnx.gelu(self.fc1(self.norm(sharding.split_rows(x[:, 0, 0], None))), approximate=False)  # (B, C) pinned
    z = sharding.split_rows(z, None)
    return self.fc2(self.dropout(z, deterministic=not train, rngs=rngs))
