"""Class names of the datasets the released X-ViT checkpoints were trained on, in logit order.

kinetics600: the 600 Kinetics-600 class names sorted alphabetically (Python `sorted()`), the index
  convention of SlowFast-style `path,num_frames,label` lists.
  Source: tensorflow/models official/projects/movinet/files/kinetics_600_labels.txt, identical to
  microsoft/VideoX X-CLIP/labels/kinetics_600_labels.csv.
something_something_v2: the 174 templates of the official something-something-v2-labels.json,
  ordered by their index "0".."173". Source: that json as reproduced in yasirbot8/Human2Bot
  data/something-something-v2-labels.json, identical to open-mmlab/mmaction2
  tools/data/sthv2/label_map.txt.
"""

from importlib import resources

from xvit_jax.data import registry
from xvit_jax.errors import UserError

DATASETS = registry.WITH_LABEL_NAMES  # each has <name>.txt here


def names(dataset: str) -> list[str]:
  """The class names of `dataset`, index i being logit i."""
  if dataset not in DATASETS:
    raise UserError(f"unknown dataset {dataset!r} for class names; available: {', '.join(DATASETS)}")
  text = resources.files(__package__).joinpath(f"{dataset}.txt").read_text(encoding="utf-8")
  return text.splitlines()
