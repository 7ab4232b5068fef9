"""Prepare a video dataset for training: python -m xvit_jax.data.prepare --dataset=NAME --manual_dir=DIR --data_dir=DIR

NAME: kinetics400, kinetics600, something_something_v2, epic_kitchens_100. Reads the dataset as
distributed from --manual_dir (the builder's MANUAL_DOWNLOAD_INSTRUCTIONS say what goes there),
re-encodes every video over --workers processes and writes <data_dir>/NAME/<version>/ as ArrayRecord,
for `tfds.data_source(NAME, data_dir=DIR)` (no TensorFlow needed). Unusable examples are skipped and
listed in <data_dir>/NAME/<version>/bad_examples.tsv. An interrupted run resumes: encoded videos are
kept in <data_dir>/NAME/work/ (delete it once the dataset is written, or to redo failed videos).
"""

import os

import tensorflow_datasets as tfds
from absl import flags

from xvit_jax.data import registry
from xvit_jax.errors import UserError
from xvit_jax.tools import cli

_DATASET = flags.DEFINE_enum("dataset", None, registry.PREPARED, "the dataset to prepare")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "the dataset as downloaded (annotations, videos)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "where to write the dataset (the tfds data_dir)")
_WORKERS = flags.DEFINE_integer("workers", None, "encoding processes (default: all cores)", lower_bound=1)
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples_per_split", None, "only the first N annotation rows of each split (a quick trial; "
    "it writes the same folder as a full build: delete <data_dir>/NAME/<version> before one)", lower_bound=1)


def prepare(dataset, *, manual_dir, data_dir, workers=None, max_examples_per_split=None):
  """Builds `dataset` unless <data_dir>/<dataset>/<version> exists; returns the builder."""
  if dataset not in registry.PREPARED:
    raise UserError(f"unknown dataset {dataset!r}; available: {', '.join(registry.PREPARED)}")
  if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
    raise UserError(f"--manual_dir {manual_dir} is not a folder with the downloaded dataset")
  builder = registry.builder(dataset)(data_dir=data_dir, workers=workers)
  if (builder.data_path / "dataset_info.json").exists():  # is_prepared() warns when it is not
    print(f"{dataset} is already prepared in {builder.data_dir}; delete that folder to rebuild it")
    return builder
  tfds.disable_progress_bar()
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, max_examples_per_split=max_examples_per_split)
  builder.download_and_prepare(download_config=config, file_format="array_record")
  return builder


def main():
  prepare(_DATASET.value, manual_dir=_MANUAL_DIR.value, data_dir=_DATA_DIR.value, workers=_WORKERS.value,
          max_examples_per_split=_MAX_EXAMPLES.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["dataset", "manual_dir", "data_dir"])
  cli.run(main)
