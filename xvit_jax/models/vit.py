"""The X-ViT backbone: a ViT over every frame, with pluggable attention, and a temporal head.

Input (B, T, H, W, 3) floats normalised to [-1, 1]; output logits (B, num_classes). The pieces follow
the official model (reference section 1): a CLS token per frame, spatial position embedding shared by
all frames, a temporal embedding indexed by t mod `temporal_embed_frames`, pre-LN blocks, and the
final-LayerNorm CLS of every frame handed to the consensus head.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xvit_jax import sharding
from xvit_jax.models import heads
from xvit_jax.models.blocks import Block
from xvit_jax.models.scan import run_blocks, run_stacks, runs, stack


def patch_matmul(conv, video):
  """The patch embedding `conv` (an nnx.Conv whose stride is its kernel) on (B, T, H, W, 3) as a matmul of
  each patch's pixels -> (B, T, S, C), patches in raster order: the conv's numbers with no axis merged."""
  b, t, h, w, c = video.shape
  p, q = conv.kernel_size
  patches = video.reshape(b, t, h // p, p, w // q, q, c).swapaxes(3, 4).reshape(b, t, -1, p * q * c)
  kernel = conv.kernel[...].astype(video.dtype)
  return patches @ kernel.reshape(-1, kernel.shape[-1]) + conv.bias[...].astype(video.dtype)


class XViT(nnx.Module):
  """The video transformer. Its hyperparameters are the `config.model` fields of the same names, resolved
  by `xvit_jax.models.create_model` (which documents them): `shift_layers` are block indices, and the
  `head_*` values (the temporal-attention head's) are concrete numbers; `remat_policy` is resolved (none, full
  or dots)."""

  def __init__(self, *, num_classes, image_size, patch_size, hidden_size, num_layers, num_heads, mlp_dim, attention,
               shift_div, shift_layers, shift_segment, temporal_window, temporal_embed_frames,
               temporal_embed_fold_batch, consensus, summary_tokens, dropout, droppath, norm_eps, head_num_layers,
               head_num_heads, head_mlp_dim, head_hidden_size, head_norm_eps, attention_impl="xla", scan_layers=False,
               remat_policy="none", dtype=jnp.float32, rngs):
    dim, patch = hidden_size, patch_size
    num_patches = (image_size // patch) ** 2
    self.embed_period = temporal_embed_frames
    self.embed_fold_batch = temporal_embed_fold_batch
    self.dtype = dtype
    self.scan_layers = scan_layers
    self.remat_policy = remat_policy
    embed_init = jax.nn.initializers.normal(dim ** -0.5)  # as big_vision's learned position embedding

    self.patch_embed = nnx.Conv(3, dim, kernel_size=(patch, patch), strides=(patch, patch), padding="VALID",
                                dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(jnp.zeros((dim,)))
    self.pos_embed = nnx.Param(embed_init(rngs.params(), (1 + num_patches, dim)))  # index 0: the CLS position
    self.temp_embed = nnx.Param(jnp.zeros((self.embed_period, dim)))  # zeros, as the paper and code
    mixed = shift_layers if attention == "xvit" else ()
    self.droppath = droppath
    self.droppath_rates = tuple(np.linspace(0.0, droppath, num_layers).tolist())  # block i's, rising linearly
    blocks = [Block(dim, num_heads, mlp_dim, attention=attention,
                    mix=(dim // shift_div, shift_segment, temporal_window) if i in mixed else None,
                    summary_tokens=summary_tokens, eps=norm_eps, attention_impl=attention_impl, dtype=dtype, rngs=rngs)
              for i in range(num_layers)]
    if scan_layers:  # each run of alike blocks stored stacked (scan.py): `stacks/k`, blocks runs[k]
      self.runs = tuple(tuple(run) for run in runs(blocks))
      self.stacks = nnx.List([stack([blocks[i] for i in run]) for run in self.runs])
    else:  # block by block: `blocks/i`
      self.blocks = nnx.List(blocks)
    self.norm = nnx.LayerNorm(dim, epsilon=norm_eps, dtype=dtype, rngs=rngs)

    if consensus == "avg":
      self.head = heads.AvgConsensus(dim, num_classes, dropout=dropout, dtype=dtype, rngs=rngs)
    else:
      self.head = heads.TemporalAttentionHead(
          dim, num_classes, num_heads=head_num_heads, mlp_dim=head_mlp_dim, head_mlp_dim=head_hidden_size,
          num_layers=head_num_layers, dropout=dropout, eps=head_norm_eps, attention_impl=attention_impl, dtype=dtype,
          rngs=rngs)

  def features(self, video, *, train=False, rngs=None):
    """(B, T, H, W, 3) -> final-LayerNorm CLS token of every frame, (B, T, C)."""
    b, t, h, w, _ = video.shape
    if sharding.traced_frames() > 1:  # frames split over chips: B and T must not be merged (split_frames)
      x = sharding.split_frames(patch_matmul(self.patch_embed, video.astype(self.dtype)))
    else:
      x = self.patch_embed(video.reshape(b * t, h, w, 3).astype(self.dtype))  # (B*T, h/p, w/p, C)
    x = x.reshape(b, t, -1, x.shape[-1])  # (B, T, S, C), patches in raster order
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, t, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=2) + self.pos_embed[...].astype(x.dtype)  # (B, T, N, C)
    index = jnp.arange(t)  # frame t gets slot t mod period; the official code indexes the folded batch
    if self.embed_fold_batch:  # (clip * T + t) mod period: differs only when T is not a multiple of it
      index = jnp.arange(b)[:, None] * t + index
    x = x + self.temp_embed[...][index % self.embed_period][..., None, :].astype(x.dtype)
    key = rngs.dropout() if train and self.droppath else None  # one key for drop path; block i folds in i
    if self.scan_layers:
      x = run_stacks(self.stacks, self.runs, x, rates=self.droppath_rates, key=key, remat=self.remat_policy)
    else:
      x = run_blocks(self.blocks, x, rates=self.droppath_rates, key=key, remat=self.remat_policy)
    return self.norm(x)[:, :, 0]

  def __call__(self, video, *, train=False, rngs=None):
    """(B, T, H, W, 3) -> logits (B, num_classes), float32. `rngs` (with a `dropout` stream) when training."""
    return self.head(self.features(video, train=train, rngs=rngs), train=train, rngs=rngs).astype(jnp.float32)

