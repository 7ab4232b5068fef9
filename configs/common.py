"""What the experiment configs share: the released X-ViT-B/16 as the official code builds it, the
paper's training recipe around it, and the `smoke` preset. Config files import this file by its path:
`common = config_lib.import_file("common.py", next_to=__file__)` (configs/ is not a Python package).
"""

from xvit_jax import config_lib, optim
from xvit_jax.data import registry


def official_xvit_b16(*, num_classes, shift_segment, shift_div):
  """A released X-ViT-B/16 model exactly as the official code builds it (reference sections 1-4, 8.1)."""
  c = config_lib.base_config()
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


def paper_recipe(dataset, *, frames, train_videos, epochs, eval_every_epochs=1):
  """The paper's X-ViT-B/16 training recipe on a real dataset, as the official configs set it
  (reference sections 5 and 6); start it from ImageNet-21k with --config.init_from=ViT-B_16.npz.
  The dataset's classes, label heads and class names come from xvit_jax/data/registry.py.

  The schedule is in epochs of `train_videos` and the rates are the official ones at batch 64: steps,
  warmup and the learning rates at the run's batch_size are derived at start (optim.resolve_schedule)."""
  c = official_xvit_b16(num_classes=registry.DATASETS[dataset].num_classes,
                        shift_segment=8 if frames == 16 else frames, shift_div=8)
  registry.apply_defaults(c, dataset)
  c.model.num_frames = frames
  c.data.train_videos, c.epochs = train_videos, epochs
  c.warmup_epochs = 5  # 5 warmup epochs, to the cosine's value at epoch 5
  c.eval_every_epochs, c.checkpoint_every_epochs, c.log_every = eval_every_epochs, 1, 100
  c.optimizer.base_batch, c.optimizer.base_learning_rate = 64, 0.03  # 8 GPUs x 8 clips
  optim.derive_schedule(c)  # steps per epoch, total_steps, warmup_steps, eval_every, checkpoint_every, LRs
  c.augment.autoaugment = True
  c.requires_init = True  # the paper starts from ImageNet-21k: a fresh run without init_from stops and asks
  return c


def smoke(c):
  """The `smoke` preset of the dataset configs: the same pipeline and recipe on a tiny model, 3 steps,
  for a CPU and a tiny prepared dataset (the tests run it on datasets they make)."""
  m = c.model
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers, m.patch_size, m.image_size = 32, 4, 64, 2, 8, 32
  m.num_frames, m.shift_segment, m.temporal_embed_frames = 8, min(m.shift_segment or 8, 8), 8
  c.data.stride = c.eval.stride = 2
  c.augment.short_side_range, c.augment.mixup_group = (36, 40), 2  # mixup (Kinetics) over the whole batch of 2
  c.batch_size, c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = 2, 3, 1, 3, 3
  c.optimizer.warmup_steps = 1
  c.optimizer.lr_scaling = "none"  # the recipe's rates at batch 64, unscaled
  c.requires_init = False  # a tiny model from random weights
  return c
