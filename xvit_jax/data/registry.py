"""Every dataset by name: its TFDS builder, its class names and the config values it implies.

Adding a dataset: its builder in xvit_jax/data/builders/, one entry here, a config in configs/. Builders
import TensorFlow Datasets, so they are named by import path and imported only when asked (`builder`):
checking a config never imports TFDS.
"""

import dataclasses
import importlib

SYNTHETIC = "synthetic"


@dataclasses.dataclass(frozen=True)
class Dataset:
  builder: str = ""  # "module:Class" of its TFDS builder; "": built in, nothing to prepare
  num_classes: int = 0  # config.model.num_classes: every label head together (0: any)
  label_heads: str = ""  # config.data.label_heads: several labels per clip ("": one, "label")
  label_names: bool = False  # xvit_jax/labels/<name>.txt lists its class names (config.data.label_names)


_BUILDERS = "xvit_jax.data.builders."
DATASETS = {
    SYNTHETIC: Dataset(),
    "kinetics400": Dataset(_BUILDERS + "kinetics:Kinetics400", num_classes=400),
    "kinetics600": Dataset(_BUILDERS + "kinetics:Kinetics600", num_classes=600, label_names=True),
    "something_something_v2": Dataset(_BUILDERS + "ssv2:SomethingSomethingV2", num_classes=174, label_names=True),
    "epic_kitchens_100": Dataset(_BUILDERS + "epic_kitchens:EpicKitchens100", num_classes=97 + 300,
                                 label_heads="verb:97,noun:300"),
}
NAMES = tuple(DATASETS)
PREPARED = tuple(name for name, d in DATASETS.items() if d.builder)  # what xvit_jax.data.prepare writes
WITH_LABEL_NAMES = tuple(name for name, d in DATASETS.items() if d.label_names)


def builder(name):
  """The TFDS builder class of a prepared dataset (imports TFDS)."""
  module, _, cls = DATASETS[name].builder.partition(":")
  return getattr(importlib.import_module(module), cls)


def apply_defaults(config, name):
  """Sets config.data.name and what the dataset implies: model.num_classes, data.label_heads and
  data.label_names (its shipped class names, else "")."""
  d = DATASETS[name]
  config.data.name, config.model.num_classes, config.data.label_heads = name, d.num_classes, d.label_heads
  config.data.label_names = name if d.label_names else ""
  return config
