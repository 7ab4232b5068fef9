"""X-ViT-B/16 on EPIC-Kitchens-100 (verb and noun), the paper's settings (section 4.1; the official code
has no EPIC loader, so the SSv2 code settings fill the gaps).

    python -m xvit_jax.main --config=configs/epic100.py --workdir=DIR --config.init_from=ViT-B_16.npz
Segment sampling over the action segment, two heads side by side (97 verbs, 300 nouns; the loss is their
sum; eval/top1 is the action accuracy, both right); 50 epochs, label smoothing 0.3, random erasing 0.5,
AutoAugment, flip; 2 x 3 test views.
"""

from xvit_jax import config_lib

common = config_lib.import_file("common.py", next_to=__file__)


def get_config(arg="16"):
  """arg: frames (8 or 16), or "smoke" for a 3-step run of a tiny model on a tiny prepared dataset."""
  if arg == "smoke":
    return common.smoke(get_config("8"))
  frames = int(arg)
  c = common.paper_recipe("epic_kitchens_100", frames=frames, train_videos=67_000, epochs=50)
  c.model.shift_segment, c.model.shift_div = frames, 4  # verb:97,noun:300 heads: xvit_jax/data/registry.py
  c.optimizer.weight_decay, c.optimizer.base_warmup_start_lr, c.optimizer.label_smoothing = 1e-4, 0.003, 0.3
  c.augment.mixup, c.augment.multiscale_crop, c.augment.flip, c.augment.random_erasing = 0.0, False, 0.5, 0.5
  c.data.sampling = "segment"
  c.eval.sampling, c.eval.temporal_views, c.eval.spatial_crops = "segment", 2, 3
  return c
