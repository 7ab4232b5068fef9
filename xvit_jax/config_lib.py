"""Every config field with its default, in one place, and the start-up checks over them.

Config files (configs/*.py) call `base_config()` and change what their setting needs; `check()` runs
before anything is built, so a wrong value stops the run with one line naming the field.
"""

import ml_collections
from ml_collections import config_dict

from xvit_jax import labels, sharding
from xvit_jax.errors import UserError
from xvit_jax.models.attention import ATTENTION_TYPES
from xvit_jax.models.heads import CONSENSUS_TYPES
from xvit_jax.models.vit import shift_layer_indices

DTYPES = ("float32", "bfloat16", "float16")
DATASETS = ("synthetic", "kinetics400", "kinetics600", "something_something_v2", "epic_kitchens_100")


def base_config():
  """ViT-B/16 X-ViT on 8 frames at 224 (the paper's model), on the built-in synthetic task."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 64  # global, over all devices and processes
  c.total_steps = 1000
  c.log_every = 50
  c.eval_every = 500  # 0: only at the end
  c.checkpoint_every = 0  # 0: only at the end (and on SIGTERM)
  c.checkpoint_keep = 3  # the newest kept; the best by eval/top1 is kept too
  c.dtype = "float32"  # compute dtype; parameters and optimizer state stay float32
  c.nonfinite = "stop"  # a step with NaN/Inf loss or gradients is never applied; stop: end the run, skip: go on
  c.grad_accum_steps = 1  # micro-batches per step: each device runs batch_size / (shards * this) clips at once
  c.init_from = ""  # pretrained weights: a checkpoint dir, Google ViT .npz, or timm/official state dict

  m = c.model = ml_collections.ConfigDict()
  m.patch_size = 16
  m.hidden_size = 768
  m.num_layers = 12
  m.num_heads = 12
  m.mlp_dim = 3072
  m.num_frames = 8
  m.image_size = 224
  m.num_classes = 400
  m.attention = "xvit"  # xvit | spatial | joint | divided
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
  m.remat = False  # recompute each block's activations in the backward pass (less memory, ~1/3 more compute)
  m.head = ml_collections.ConfigDict()  # the temporal-attention head; None or 0 follows the backbone
  m.head.num_layers = 1
  m.head.num_heads = config_dict.placeholder(int)
  m.head.mlp_dim = config_dict.placeholder(int)
  m.head.hidden_size = config_dict.placeholder(int)  # width of the MLP head's hidden layer
  m.head.norm_eps = 1e-5

  d = c.data = ml_collections.ConfigDict()
  d.name = "synthetic"
  d.train_size = 1_000_000  # synthetic clips are generated on the fly; this is one "epoch"
  d.eval_size = 512
  d.object_size = 8
  d.speed = 3.0  # pixels per frame
  d.workers = 0  # grain worker processes (0: read in the main process)
  d.data_dir = ""  # where xvit_jax.data.prepare wrote the TFDS datasets ("": TFDS's default)
  d.train_split, d.eval_split = "train", "validation"
  d.sampling = "dense"  # train frames: dense (a random span of num_frames*stride) | segment (one per segment)
  d.stride = 16

  a = c.augment = ml_collections.ConfigDict()  # train-time, applied alike to every frame of a clip
  a.multiscale_crop = True  # TSN multi-scale crop (Kinetics); False: short side in short_side_range + random crop
  a.short_side_range = (256, 320)
  a.flip = 0.5  # horizontal flip probability (0 for SSv2)
  a.autoaugment = False  # timm AutoAugment v0, one draw per clip
  a.random_erasing = 0.0  # probability of one erased box per clip
  a.mixup = 0.0  # Beta(alpha, alpha) mixup within each device's batch; 0: off

  d.label_heads = ""  # several labels per clip, e.g. "verb:97,noun:300" (EPIC); "": one label, model.num_classes
  d.label_names = ""  # built-in class names: kinetics600 | something_something_v2 ("": "class <i>")

  e = c.eval = ml_collections.ConfigDict()  # how a whole video becomes views (predict, video evaluation)
  e.sampling = "dense"  # dense: num_frames every `stride` frames (Kinetics) | segment: one per segment (SSv2)
  e.stride = 16  # dense sampling: source frames between two sampled frames
  e.temporal_views = 1  # clips per video; logits are summed over all views
  e.spatial_crops = 3  # 3: left/centre/right (or top/centre/bottom) crops of the short-side-resized video; 1: centre

  c.mesh = ml_collections.ConfigDict()  # device mesh sizes (xvit_jax/sharding.py); -1: the devices left over
  c.mesh.data = -1  # batch split, parameters replicated
  c.mesh.fsdp = 1  # batch split, parameters and optimizer state sharded
  c.mesh.tensor = 1  # attention heads and MLP units split

  o = c.optimizer = ml_collections.ConfigDict()
  o.learning_rate = 0.03  # peak, reached after warmup; cosine to zero at total_steps
  o.warmup_steps = 100
  o.warmup_start_lr = 0.0
  o.momentum = 0.9
  o.nesterov = True
  o.weight_decay = 1e-5  # coupled (added to the gradient), as torch SGD in the official code
  o.grad_clip = 0.0  # global-norm clipping; 0: off
  o.label_smoothing = 0.0
  return c


def official_xvit_b16(*, num_classes, shift_segment, shift_div):
  """A released X-ViT-B/16 model exactly as the official code builds it (reference sections 1-4, 8.1)."""
  c = base_config()
  m = c.model
  m.num_frames, m.image_size, m.patch_size, m.num_classes = 16, 224, 16, num_classes
  m.attention, m.consensus = "xvit", "temporal_attention"  # the official `vit` consensus is the TA head
  m.shift_div = shift_div  # the official SHIFT_DIV
  m.shift_segment = shift_segment  # the official NUM_SEGMENTS: the shift restarts at its boundaries
  m.temporal_embed_frames = 8  # VisionTransformer(num_frames=8) is never overridden
  m.temporal_embed_fold_batch = True  # and indexed through view(B*T/8, 8, ...)
  m.dropout, m.norm_eps, m.head.norm_eps, m.head.num_layers = 0.5, 1e-6, 1e-5, 1
  c.optimizer.learning_rate, c.optimizer.nesterov = 0.03, True
  c.eval.spatial_crops = 3  # short side -> 224, then three 224 crops (reference 5.2, 8.1 item 11)
  return c


def paper_recipe(dataset, *, num_classes, frames, steps_per_epoch, epochs):
  """The paper's X-ViT-B/16 training recipe on a real dataset, as the official configs set it
  (reference sections 5 and 6); start it from ImageNet-21k with --config.init_from=ViT-B_16.npz."""
  c = official_xvit_b16(num_classes=num_classes, shift_segment=8 if frames == 16 else frames, shift_div=8)
  c.model.num_frames = frames
  c.data.name = dataset
  c.total_steps = epochs * steps_per_epoch
  c.optimizer.warmup_steps = 5 * steps_per_epoch  # 5 warmup epochs, to the cosine's value at epoch 5
  c.eval_every, c.checkpoint_every, c.log_every = steps_per_epoch, steps_per_epoch, 100
  c.augment.autoaugment = True
  return c


def kinetics_recipe(dataset, *, num_classes, frames, train_videos):
  """The official Kinetics config: dense 16x16 sampling, label smoothing 0.3, mixup 0.4, multi-scale
  crop, flip, AutoAugment, 30 epochs, warmup from 0.01, weight decay 1e-5, 1 x 3 test views."""
  c = paper_recipe(dataset, num_classes=num_classes, frames=frames, steps_per_epoch=train_videos // 64, epochs=30)
  c.data.label_names = dataset if dataset == "kinetics600" else ""
  c.optimizer.weight_decay, c.optimizer.warmup_start_lr, c.optimizer.label_smoothing = 1e-5, 0.01, 0.3
  c.augment.mixup, c.augment.multiscale_crop, c.augment.flip = 0.4, True, 0.5
  c.data.sampling, c.data.stride = "dense", 16
  c.eval.sampling, c.eval.stride, c.eval.temporal_views, c.eval.spatial_crops = "dense", 16, 1, 3
  return c


def label_heads(config):
  """[(record field, number of classes)]: ("label", num_classes) alone, or the heads of data.label_heads;
  the model's logits are these heads side by side."""
  if not config.data.label_heads:
    return [("label", config.model.num_classes)]
  heads = []
  for part in config.data.label_heads.split(","):
    name, _, size = part.partition(":")
    if not name.strip() or not size.strip().isdigit() or int(size) <= 0:
      _fail("data.label_heads", config.data.label_heads, 'comma-separated "name:classes" such as "verb:97,noun:300"')
    heads.append((name.strip(), int(size)))
  return heads


def smoke(c):
  """The `smoke` preset of the dataset configs: the same pipeline and recipe on a tiny model, 3 steps,
  for a CPU and a tiny prepared dataset (the tests run it on datasets they make)."""
  m = c.model
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers, m.patch_size, m.image_size = 32, 4, 64, 2, 8, 32
  m.num_frames, m.shift_segment, m.temporal_embed_frames = 8, min(m.shift_segment or 8, 8), 8
  c.data.stride = c.eval.stride = 2
  c.augment.short_side_range = (36, 40)
  c.batch_size, c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = 2, 3, 1, 3, 3
  c.optimizer.warmup_steps = 1
  return c


def _fail(field, value, allowed):
  raise UserError(f"config.{field}={value!r} is not allowed: {allowed}")


def _positive_int(config, field):
  value = _get(config, field)
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    _fail(field, value, "it must be a positive integer")
  return value


def _get(config, field):
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def check(config, num_devices):
  """Raises UserError (one line naming the field) for any value the run could not use."""
  m = config.model
  for field in ("batch_size", "total_steps", "model.patch_size", "model.hidden_size", "model.num_layers",
                "model.num_heads", "model.mlp_dim", "model.num_frames", "model.image_size", "model.num_classes",
                "model.shift_div", "model.temporal_window"):
    _positive_int(config, field)
  if m.attention not in ATTENTION_TYPES:
    _fail("model.attention", m.attention, f"one of {', '.join(ATTENTION_TYPES)}")
  if m.consensus not in CONSENSUS_TYPES:
    _fail("model.consensus", m.consensus, f"one of {', '.join(CONSENSUS_TYPES)}")
  if config.dtype not in DTYPES:
    _fail("dtype", config.dtype, f"one of {', '.join(DTYPES)}")
  if config.data.name not in DATASETS:
    _fail("data.name", config.data.name, f"one of {', '.join(DATASETS)}")
  if m.image_size % m.patch_size:
    _fail("model.image_size", m.image_size, f"a multiple of model.patch_size={m.patch_size}")
  if m.hidden_size % m.num_heads:
    _fail("model.hidden_size", m.hidden_size, f"a multiple of model.num_heads={m.num_heads}")
  segment = m.shift_segment or m.num_frames
  if m.shift_segment is not None and m.shift_segment <= 0:
    _fail("model.shift_segment", m.shift_segment, "a positive integer, or None for model.num_frames")
  if m.num_frames % segment:
    _fail("model.num_frames", m.num_frames, f"a multiple of model.shift_segment={segment}")
  if m.temporal_embed_frames is not None and m.temporal_embed_frames <= 0:
    _fail("model.temporal_embed_frames", m.temporal_embed_frames, "a positive integer, or None for model.num_frames")
  if 2 * m.temporal_window * (m.hidden_size // m.shift_div) > m.hidden_size:
    _fail("model.shift_div", m.shift_div,
          f"at least 2*model.temporal_window={2 * m.temporal_window} so the mixed channels fit in hidden_size")
  try:
    layers = shift_layer_indices(m.shift_layers, m.num_layers)
  except ValueError:
    layers = None
  if layers is None or any(not 0 <= i < m.num_layers for i in layers):
    _fail("model.shift_layers", m.shift_layers, f'"all", "none" or block indices in 0..{m.num_layers - 1} like "0-5,8"')
  if not isinstance(m.summary_tokens, int) or m.summary_tokens < 0:
    _fail("model.summary_tokens", m.summary_tokens, "an integer >= 0")
  if m.summary_tokens and m.attention not in ("xvit", "spatial"):
    _fail("model.summary_tokens", m.summary_tokens, f"0 with model.attention={m.attention!r} (xvit or spatial only)")
  for field in ("model.dropout", "model.droppath", "optimizer.label_smoothing"):
    if not 0.0 <= _get(config, field) < 1.0:
      _fail(field, _get(config, field), "a rate in [0, 1)")
  if m.consensus == "temporal_attention":
    head_heads = m.head.num_heads or m.num_heads
    if m.hidden_size % head_heads:
      _fail("model.head.num_heads", head_heads, f"a divisor of model.hidden_size={m.hidden_size}")
  if config.nonfinite not in ("stop", "skip"):
    _fail("nonfinite", config.nonfinite, "stop (end the run at the first NaN/Inf step) or skip (count it, go on)")
  _positive_int(config, "grad_accum_steps")
  _positive_int(config, "checkpoint_keep")
  mesh = sharding.mesh_shape(config.mesh, num_devices)
  shards = mesh["data"] * mesh["fsdp"]
  if config.batch_size % (shards * config.grad_accum_steps):
    _fail("batch_size", config.batch_size,
          f"a multiple of {shards * config.grad_accum_steps}: the batch is split over mesh data={mesh['data']} x "
          f"fsdp={mesh['fsdp']} = {shards} devices and grad_accum_steps={config.grad_accum_steps} micro-batches")
  for field in ("log_every", "eval_every", "checkpoint_every", "optimizer.warmup_steps", "data.workers"):
    if _get(config, field) < 0:
      _fail(field, _get(config, field), "an integer >= 0")
  if config.data.sampling not in ("dense", "segment"):
    _fail("data.sampling", config.data.sampling, "one of dense, segment")
  for field in ("augment.flip", "augment.random_erasing"):
    if not 0.0 <= _get(config, field) <= 1.0:
      _fail(field, _get(config, field), "a probability in [0, 1]")
  if config.augment.mixup < 0:
    _fail("augment.mixup", config.augment.mixup, "an alpha >= 0 (0: off)")
  lo, hi = config.augment.short_side_range
  if not 0 < lo <= hi or lo < m.image_size:
    _fail("augment.short_side_range", tuple(config.augment.short_side_range), f"(low, high) with model.image_size={m.image_size} <= low <= high")
  if config.eval.sampling not in ("dense", "segment"):
    _fail("eval.sampling", config.eval.sampling, "one of dense, segment")
  if config.eval.spatial_crops not in (1, 3):
    _fail("eval.spatial_crops", config.eval.spatial_crops, "1 or 3")
  max_views = 3 if config.eval.sampling == "segment" else 1_000
  if not 1 <= config.eval.temporal_views <= max_views:
    _fail("eval.temporal_views", config.eval.temporal_views, f"an integer in 1..{max_views} for {config.eval.sampling} sampling")
  if config.eval.stride <= 0:
    _fail("eval.stride", config.eval.stride, "a positive integer")
  if config.data.label_names not in ("",) + labels.DATASETS:
    _fail("data.label_names", config.data.label_names, f"empty or one of {', '.join(labels.DATASETS)}")
  heads = label_heads(config)
  if sum(size for _, size in heads) != m.num_classes:
    _fail("data.label_heads", config.data.label_heads, f"heads adding up to model.num_classes={m.num_classes}")
  if config.data.label_names and len(labels.names(config.data.label_names)) != m.num_classes:
    _fail("data.label_names", config.data.label_names,
          f"a list of model.num_classes={m.num_classes} names (it has {len(labels.names(config.data.label_names))})")
  if config.optimizer.warmup_steps >= config.total_steps:
    _fail("optimizer.warmup_steps", config.optimizer.warmup_steps,
          f"fewer than total_steps={config.total_steps} (warmup rises to the cosine's value at its end, "
          "which is 0 at total_steps: the learning rate would stay 0)")
  if config.optimizer.learning_rate <= 0:
    _fail("optimizer.learning_rate", config.optimizer.learning_rate, "a positive number")
