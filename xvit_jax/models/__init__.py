"""X-ViT model: backbone (vit.py), attention variants (attention.py), temporal heads (heads.py).

The modules take plain hyperparameters; this file owns the `model` config section (its defaults and
checks) and `create_model`, the one place that maps the section onto them.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from ml_collections import config_dict

from xvit_jax import fields
from xvit_jax.models.attention import ATTENTION_IMPLEMENTATIONS, ATTENTION_TYPES
from xvit_jax.models.heads import CONSENSUS_TYPES
from xvit_jax.models.scan import REMAT_POLICIES
from xvit_jax.models.vit import XViT

__all__ = ["XViT", "abstract_params", "check_config", "create_model", "default_config", "remat_policy",
           "shift_layer_indices"]


def default_config():
  """The `model` section: ViT-B/16 X-ViT on 8 frames at 224 (the paper's model)."""
  m = ml_collections.ConfigDict()
  m.patch_size = 16
  m.hidden_size = 768
  m.num_layers = 12
  m.num_heads = 12
  m.mlp_dim = 3072
  m.num_frames = 8
  m.image_size = 224
  m.num_classes = 400
  m.attention = "xvit"  # xvit | spatial | joint | divided
  m.attention_impl = "xla"  # xla (any device; bf16 logits, f32 softmax) | cudnn (GPUs, bf16/fp16: jax.nn fused flash)
  m.shift_div = 4  # 1/shift_div of the k/v channels come from each neighbour frame (paper's rho = 2/shift_div)
  m.shift_layers = "all"  # blocks that mix: "all", "none", or indices such as "0-5" or "1,3,5"
  m.temporal_window = 1  # t_w: neighbours t-t_w .. t+t_w share channels (paper eqs. 8-9)
  m.shift_segment = config_dict.placeholder(int)  # frames per independent mixing segment; None: num_frames
  m.temporal_embed_frames = config_dict.placeholder(int)  # temporal embedding period; None: num_frames
  m.temporal_embed_fold_batch = False  # official quirk: slot (clip*T + t) mod period instead of t mod period
  m.consensus = "temporal_attention"  # avg | temporal_attention
  m.summary_tokens = 0  # per-frame summary tokens every frame attends to (paper section 3); 0: off
  m.dropout = 0.5  # before the head, and inside the temporal-attention head's MLP
  m.droppath = 0.0  # stochastic depth, rising linearly to this over the blocks
  m.norm_eps = 1e-6  # backbone LayerNorm epsilon
  m.scan_layers = False  # runs of alike blocks stored stacked, each one scan (TPU: with remat_policy dots or full)
  m.remat_policy = config_dict.placeholder(str)  # none | full | dots: what a block keeps for the backward pass
  m.remat = False  # True: remat_policy "full" (recompute each block in the backward pass: less memory, +1/3 compute)
  m.head = ml_collections.ConfigDict()  # the temporal-attention head; None or 0 follows the backbone
  m.head.num_layers = 1
  m.head.num_heads = config_dict.placeholder(int)
  m.head.mlp_dim = config_dict.placeholder(int)
  m.head.hidden_size = config_dict.placeholder(int)  # width of the MLP head's hidden layer
  m.head.norm_eps = 1e-5
  return m


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


def remat_policy(cfg):
  """The `config.model` section's remat policy: `remat_policy`, or "full" with `remat=True`, else "none"."""
  return cfg.get("remat_policy") or ("full" if cfg.get("remat", False) else "none")


def create_model(cfg, *, dtype="float32", seed=0):
  """Builds XViT from `config.model` with parameters drawn from `seed` (float32 parameters)."""
  head = cfg.head
  mixed = shift_layer_indices(cfg.shift_layers, cfg.num_layers) if cfg.attention == "xvit" else ()
  return XViT(
      num_classes=cfg.num_classes, image_size=cfg.image_size, patch_size=cfg.patch_size,
      hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
      attention=cfg.attention, attention_impl=cfg.get("attention_impl", "xla"), shift_div=cfg.shift_div,
      shift_layers=mixed,
      shift_segment=cfg.shift_segment or cfg.num_frames, temporal_window=cfg.temporal_window,
      temporal_embed_frames=cfg.temporal_embed_frames or cfg.num_frames,
      temporal_embed_fold_batch=cfg.temporal_embed_fold_batch, consensus=cfg.consensus,
      summary_tokens=cfg.summary_tokens, dropout=cfg.dropout, droppath=cfg.droppath, norm_eps=cfg.norm_eps,
      head_num_layers=head.num_layers, head_num_heads=head.num_heads or cfg.num_heads,
      head_mlp_dim=head.mlp_dim or cfg.mlp_dim, head_hidden_size=head.hidden_size or cfg.hidden_size,
      head_norm_eps=head.norm_eps, scan_layers=cfg.get("scan_layers", False), remat_policy=remat_policy(cfg),
      dtype=jnp.dtype(dtype), rngs=nnx.Rngs(params=seed))


def abstract_params(cfg):
  """The parameters' shapes and dtypes (nested dict of ShapeDtypeStruct) without computing any."""
  return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: create_model(cfg)), nnx.Param))


def check_config(config):
  """UserError naming the field for a `model` value the run could not use."""
  m = config.model
  for field in ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "num_frames", "image_size",
                "num_classes", "shift_div", "temporal_window"):
    fields.positive_int(config, f"model.{field}")
  fields.one_of(config, "model.attention", ATTENTION_TYPES)
  fields.one_of(config, "model.consensus", CONSENSUS_TYPES)
  fields.one_of(config, "model.attention_impl", ATTENTION_IMPLEMENTATIONS)
  if m.attention_impl == "cudnn":
    if config.dtype == "float32":
      fields.fail("model.attention_impl", m.attention_impl, "xla with dtype=float32 (cuDNN's attention takes "
                  "bfloat16 or float16: set --config.dtype=bfloat16)")
    if jax.default_backend() != "gpu":
      fields.fail("model.attention_impl", m.attention_impl, f"xla on this {jax.default_backend()} backend "
                  "(cudnn needs an NVIDIA GPU)")
  if m.image_size % m.patch_size:
    fields.fail("model.image_size", m.image_size, f"a multiple of model.patch_size={m.patch_size}")
  if m.hidden_size % m.num_heads:
    fields.fail("model.hidden_size", m.hidden_size, f"a multiple of model.num_heads={m.num_heads}")
  segment = m.shift_segment or m.num_frames
  if m.shift_segment is not None and m.shift_segment <= 0:
    fields.fail("model.shift_segment", m.shift_segment, "a positive integer, or None for model.num_frames")
  if m.num_frames % segment:
    fields.fail("model.num_frames", m.num_frames, f"a multiple of model.shift_segment={segment}")
  if m.temporal_embed_frames is not None and m.temporal_embed_frames <= 0:
    fields.fail("model.temporal_embed_frames", m.temporal_embed_frames,
                "a positive integer, or None for model.num_frames")
  if 2 * m.temporal_window * (m.hidden_size // m.shift_div) > m.hidden_size:
    fields.fail("model.shift_div", m.shift_div,
                f"at least 2*model.temporal_window={2 * m.temporal_window} so the mixed channels fit in hidden_size")
  try:
    layers = shift_layer_indices(m.shift_layers, m.num_layers)
  except ValueError:
    layers = None
  if layers is None or any(not 0 <= i < m.num_layers for i in layers):
    fields.fail("model.shift_layers", m.shift_layers,
                f'"all", "none" or block indices in 0..{m.num_layers - 1} like "0-5,8"')
  if not isinstance(m.summary_tokens, int) or m.summary_tokens < 0:
    fields.fail("model.summary_tokens", m.summary_tokens, "an integer >= 0")
  if m.summary_tokens and m.attention not in ("xvit", "spatial"):
    fields.fail("model.summary_tokens", m.summary_tokens,
                f"0 with model.attention={m.attention!r} (xvit or spatial only)")
  fields.rate(config, "model.dropout", "model.droppath")
  if m.get("remat_policy") is not None:  # get: a config saved before the field existed has none
    fields.one_of(config, "model.remat_policy", tuple(REMAT_POLICIES))
  if m.get("remat", False) and m.get("remat_policy") == "none":
    fields.fail("model.remat_policy", m.remat_policy, "full or dots with model.remat=True (remat=True means full)")
  head_heads = m.head.num_heads or m.num_heads
  if m.consensus == "temporal_attention" and m.hidden_size % head_heads:
    fields.fail("model.head.num_heads", head_heads, f"a divisor of model.hidden_size={m.hidden_size}")
