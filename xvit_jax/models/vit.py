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

from xvit_jax.models import heads
from xvit_jax.models.blocks import Block


def shift_layer_indices(spec, num_layers):
  """`shift_layers` config value -> sorted block indices: "all", "none" or e.g. "0,1,2" / "0-5,8"."""
  spec = str(spec).strip().lower()
  if spec == "all":
    return tuple(range(num_layers))
  if spec in ("none", ""):
    return ()
  layers = set()
  for part in spec.split(","):
    lo, _, hi = part.partition("-")
    layers.update(range(int(lo), int(hi or lo) + 1))
  return tuple(sorted(layers))


class XViT(nnx.Module):
  """The video transformer; `cfg` is `config.model` (see configs/common.py for every field)."""

  def __init__(self, cfg, *, dtype=jnp.float32, rngs):
    dim, patch = cfg.hidden_size, cfg.patch_size
    num_patches = (cfg.image_size // patch) ** 2
    segment = cfg.shift_segment or cfg.num_frames
    self.embed_period = cfg.temporal_embed_frames or cfg.num_frames
    self.embed_fold_batch = cfg.temporal_embed_fold_batch
    self.dtype = dtype
    self.remat = cfg.get("remat", False)
    embed_init = jax.nn.initializers.normal(dim ** -0.5)  # as big_vision's learned position embedding

    self.patch_embed = nnx.Conv(3, dim, kernel_size=(patch, patch), strides=(patch, patch), padding="VALID",
                                dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(jnp.zeros((dim,)))
    self.pos_embed = nnx.Param(embed_init(rngs.params(), (1 + num_patches, dim)))  # index 0: the CLS position
    self.temp_embed = nnx.Param(jnp.zeros((self.embed_period, dim)))  # zeros, as the paper and code
    mixed = shift_layer_indices(cfg.shift_layers, cfg.num_layers) if cfg.attention == "xvit" else ()
    droppath = np.linspace(0.0, cfg.droppath, cfg.num_layers).tolist()
    self.blocks = nnx.List([
        Block(dim, cfg.num_heads, cfg.mlp_dim, attention=cfg.attention,
              mix=(dim // cfg.shift_div, segment, cfg.temporal_window) if i in mixed else None,
              summary_tokens=cfg.summary_tokens, eps=cfg.norm_eps, droppath=droppath[i], dtype=dtype, rngs=rngs)
        for i in range(cfg.num_layers)])
    self.norm = nnx.LayerNorm(dim, epsilon=cfg.norm_eps, dtype=dtype, rngs=rngs)

    if cfg.consensus == "avg":
      self.head = heads.AvgConsensus(dim, cfg.num_classes, dropout=cfg.dropout, dtype=dtype, rngs=rngs)
    else:
      head = cfg.head
      self.head = heads.TemporalAttentionHead(
          dim, cfg.num_classes, num_heads=head.num_heads or cfg.num_heads, mlp_dim=head.mlp_dim or cfg.mlp_dim,
          head_mlp_dim=head.hidden_size or dim, num_layers=head.num_layers, dropout=cfg.dropout,
          eps=head.norm_eps, dtype=dtype, rngs=rngs)

  def features(self, video, *, train=False, rngs=None):
    """(B, T, H, W, 3) -> final-LayerNorm CLS token of every frame, (B, T, C)."""
    b, t, h, w, _ = video.shape
    x = self.patch_embed(video.reshape(b * t, h, w, 3).astype(self.dtype))  # (B*T, h/p, w/p, C)
    x = x.reshape(b, t, -1, x.shape[-1])  # (B, T, S, C), patches in raster order
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, t, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=2) + self.pos_embed[...].astype(x.dtype)  # (B, T, N, C)
    index = jnp.arange(t)  # frame t gets slot t mod period; the official code indexes the folded batch
    if self.embed_fold_batch:  # (clip * T + t) mod period: differs only when T is not a multiple of it
      index = jnp.arange(b)[:, None] * t + index
    x = x + self.temp_embed[...][index % self.embed_period][..., None, :].astype(x.dtype)
    run = lambda block, x, rngs: block(x, train=train, rngs=rngs)
    if self.remat:  # keep only each block's input for the backward pass; recompute the rest
      run = nnx.remat(run)
    for block in self.blocks:
      x = run(block, x, rngs)
    return self.norm(x)[:, :, 0]

  def __call__(self, video, *, train=False, rngs=None):
    """(B, T, H, W, 3) -> logits (B, num_classes), float32. `rngs` (with a `dropout` stream) when training."""
    return self.head(self.features(video, train=train, rngs=rngs), train=train, rngs=rngs).astype(jnp.float32)


def create_model(cfg, *, dtype="float32", seed=0):
  """Builds XViT from `config.model` with parameters drawn from `seed` (float32 parameters)."""
  return XViT(cfg, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(params=seed))


def abstract_params(cfg):
  """The parameters' shapes and dtypes (nested dict of ShapeDtypeStruct) without computing any."""
  return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: create_model(cfg)), nnx.Param))
