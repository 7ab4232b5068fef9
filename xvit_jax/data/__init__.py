"""Input: video sources (synthetic.py, prepared datasets), transforms and grain pipelines.

This module owns the `data` and `augment` config sections (their defaults and checks), and parses
`data.label_heads` for everything that reads labels or logits.
"""

import ml_collections
import numpy as np

from xvit_jax import fields, labels
from xvit_jax.data import registry


def default_config():
  """The `data` section: the built-in synthetic task."""
  d = ml_collections.ConfigDict()
  d.name = registry.SYNTHETIC
  d.train_size = 1_000_000  # synthetic clips are generated on the fly; this is one "epoch"
  d.eval_size = 512
  d.object_size = 8
  d.speed = 3.0  # pixels per frame
  d.workers = -1  # grain worker processes; -1: automatic (this process's share of the CPUs); 0: the main process
  d.data_dir = ""  # where xvit_jax.data.prepare wrote the TFDS datasets ("": TFDS's default)
  d.train_split, d.eval_split = "train", "validation"
  d.sampling = "dense"  # train frames: dense (a random span of num_frames*stride) | segment (one per segment)
  d.stride = 16
  d.label_heads = ""  # several labels per clip, e.g. "verb:97,noun:300" (EPIC); "": one label, model.num_classes
  d.label_names = ""  # built-in class names: kinetics600 | something_something_v2 ("": "class <i>")
  return d


def default_augment_config():
  """The `augment` section: train-time, applied alike to every frame of a clip."""
  a = ml_collections.ConfigDict()
  a.multiscale_crop = True  # TSN multi-scale crop (Kinetics); False: short side in short_side_range + random crop
  a.short_side_range = (256, 320)
  a.flip = 0.5  # horizontal flip probability (0 for SSv2)
  a.autoaugment = False  # timm AutoAugment v0, one draw per clip
  a.random_erasing = 0.0  # probability of one erased box per clip
  a.mixup = 0.0  # Beta(alpha, alpha) mixup within each group of mixup_group clips; 0: off
  a.mixup_group = 8  # clips mixed together: consecutive rows of the global batch (the official per-GPU batch)
  return a


def label_heads(config):
  """([(record field, number of classes)], bounds): ("label", model.num_classes) alone, or the heads of
  data.label_heads; the model's logits are these heads side by side, head i in columns bounds[i]:bounds[i+1]."""
  spec = config.data.label_heads
  heads = [("label", config.model.num_classes)] if not spec else []
  for part in spec.split(",") if spec else ():
    name, _, size = part.partition(":")
    if not name.strip() or not size.strip().isdigit() or int(size) <= 0:
      fields.fail("data.label_heads", spec, 'comma-separated "name:classes" such as "verb:97,noun:300"')
    heads.append((name.strip(), int(size)))
  return heads, np.cumsum([0] + [size for _, size in heads])


def check_config(config):
  """UserError naming the field for a `data` or `augment` value the run could not use."""
  d, a, num_classes = config.data, config.augment, config.model.num_classes
  fields.one_of(config, "data.name", registry.NAMES)
  if d.workers < -1:
    fields.fail("data.workers", d.workers, "-1 (automatic: from the CPUs this process may use), 0 (the main "
                "process reads) or a number of grain worker processes")
  fields.one_of(config, "data.sampling", ("dense", "segment"))
  for field in ("augment.flip", "augment.random_erasing"):
    if not 0.0 <= fields.get(config, field) <= 1.0:
      fields.fail(field, fields.get(config, field), "a probability in [0, 1]")
  if a.mixup < 0:
    fields.fail("augment.mixup", a.mixup, "an alpha >= 0 (0: off)")
  if a.mixup and config.batch_size % fields.positive_int(config, "augment.mixup_group"):
    fields.fail("augment.mixup_group", a.mixup_group, f"a divisor of batch_size={config.batch_size}")
  lo, hi = a.short_side_range
  image_size = config.model.image_size
  if not 0 < lo <= hi or lo < image_size:
    fields.fail("augment.short_side_range", tuple(a.short_side_range),
                f"(low, high) with model.image_size={image_size} <= low <= high")
  if d.label_names not in ("",) + labels.DATASETS:
    fields.fail("data.label_names", d.label_names, f"empty or one of {', '.join(labels.DATASETS)}")
  heads, _ = label_heads(config)
  if sum(size for _, size in heads) != num_classes:
    fields.fail("data.label_heads", d.label_heads, f"heads adding up to model.num_classes={num_classes}")
  if d.label_names and len(labels.names(d.label_names)) != num_classes:
    fields.fail("data.label_names", d.label_names,
                f"a list of model.num_classes={num_classes} names (it has {len(labels.names(d.label_names))})")
