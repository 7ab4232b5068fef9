"""The TFDS builder the video datasets share: annotations -> checks -> parallel re-encode -> ArrayRecord.

A dataset subclass only reads its annotations (`read_annotations`): per split a list of `Example`s
(id, labels, where the video is and how to load it) and the class names of each label feature. This
class skips what cannot be used (bad annotation rows, missing or empty videos, unknown labels,
duplicate ids, ids that are not plain names, videos that resolve outside the manual folder through
`..` or a symbolic link, videos that fail to decode or claim absurd sizes), encodes the rest over `workers` processes into a work
folder that a rerun reuses (<data_dir>/<name>/work/<version>/<split>/), writes the skipped ones to
<data_dir>/<name>/<version>/bad_examples.tsv and prints "<name> <split>: skipped N of M examples: ...".
The work folder is keyed by VERSION: bump it when the stored format (common.py) changes.
"""

import abc
import dataclasses
import os
from typing import Any, Callable

import numpy as np
import tensorflow_datasets as tfds

from xvit_jax.data.builders import common

REPORT = "bad_examples.tsv"


def plain_name(name):
  """Whether an annotation's id (or a path part built from one) is a plain name: no separator, not . or ..;
  annotations come from the internet, and an id such as ../../etc/passwd must not become a path."""
  return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\0"))


def inside(path, root):
  """Whether `path`, with every symbolic link resolved, lies in the folder `root` (already resolved)."""
  return os.path.commonpath([os.path.realpath(path), root]) == root


@dataclasses.dataclass
class Example:
  """One annotation row.

  labels: feature -> class name (str), class index (int), or None for an unlabelled example (-1).
  source: the file or folder that must exist (None: not found; `missing` says where it was looked for).
  load(*args) -> the frames, RGB uint8 (H, W, 3) each, an iterable read one at a time (so that a long or
  high-resolution video never sits whole in memory); args default to (source,).
  error: (reason, detail) when the row itself is unusable.
  """
  id: str
  labels: dict[str, Any]
  source: str | None = None
  load: Callable = common.load_video
  args: tuple | None = None
  missing: str = ""
  error: tuple[str, str] | None = None


class VideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the video builders (see the module docstring)."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "h264 mp4 clips, short side 256 (never upscaled), all source frames.",
                   "2.0.0": "JPEG frames (a loader decodes only those it samples), short side 256, all source frames."}
  LABEL_FEATURES = ("label",)
  HOMEPAGE = None
  CITATION = None

  def __init__(self, *, workers=None, **kwargs):
    """workers: encoding processes (default: all cores). Other arguments go to tfds."""
    self.workers = max(1, workers or os.cpu_count() or 1)
    self.report = None
    self._max_examples, self._index, self._manual_root = None, {}, None
    super().__init__(**kwargs)

  @abc.abstractmethod
  def read_annotations(self, manual_dir: str) -> tuple[dict[str, list[Example]], dict[str, list[str]]]:
    """({split: [Example]}, {label feature: class names in index order}); UserError if unusable."""

  def _info(self):
    features = {
        "frames": tfds.features.Tensor(shape=(), dtype=np.object_, doc="the frames' JPEG files one after another"),
        "frame_ends": tfds.features.Tensor(shape=(None,), dtype=np.int64, doc="where each frame ends in `frames`"),
        "id": tfds.features.Text(doc="the example id of the annotations"),
        "num_frames": tfds.features.Scalar(np.int32, doc="frames of the video"),
    }
    features.update({name: tfds.features.ClassLabel() for name in self.LABEL_FEATURES})  # names: later
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, homepage=self.HOMEPAGE,
                                 citation=self.CITATION, features=tfds.features.FeaturesDict(features))

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    self._max_examples = download_config.max_examples_per_split
    self.report = common.Report(self.name)
    super()._download_and_prepare(dl_manager, download_config)
    final = os.path.join(os.fspath(self.data_dir_root), self.name, str(self.version), REPORT)
    print(f"{self.report.summary()}; report: {final}", flush=True)

  def _split_generators(self, dl_manager):
    self._manual_root = os.path.realpath(dl_manager.manual_dir)
    splits, names = self.read_annotations(os.fspath(dl_manager.manual_dir))
    for feature, label_names in names.items():
      self.info.features[feature].names = label_names
    return {split: self._generate_examples(split, examples) for split, examples in splits.items()}

  def _labels(self, example):
    """(labels as indices, None) or (None, (reason, detail))."""
    out = {}
    for feature in self.LABEL_FEATURES:
      value, index = example.labels.get(feature), self._index[feature]
      if value is None:
        out[feature] = -1
      elif isinstance(value, str) and value in index:
        out[feature] = index[value]
      elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(index):
        out[feature] = int(value)
      else:
        return None, ("unknown label", f"{feature} {value!r} is not one of the {len(index)} classes")
    return out, None

  def _check(self, example, seen):
    """(labels, None) for a usable example, else (None, (reason, detail))."""
    if example.error:
      return None, example.error
    if not plain_name(example.id):
      return None, ("unsafe id", f"{example.id!r} is not a plain name: as a path it would leave the manual folder")
    if example.id in seen:
      return None, ("duplicate id", "the id appears earlier in this split")
    labels, error = self._labels(example)
    if error:
      return None, error
    if example.source is not None and not inside(example.source, self._manual_root):
      return None, ("outside the manual folder", f"{example.source} resolves to {os.path.realpath(example.source)},"
                    f" outside {self._manual_root} (copy or bind-mount the videos into --manual_dir)")
    if example.source is None or not os.path.exists(example.source):
      return None, ("missing video", example.missing or example.source)
    if os.path.isfile(example.source) and os.path.getsize(example.source) == 0:
      return None, ("empty file", example.source)
    return labels, None

  def _generate_examples(self, split, examples):  # pylint: disable=arguments-differ
    if self._max_examples is not None:
      examples = examples[:self._max_examples]
    self._index = {f: {n: i for i, n in enumerate(self.info.features[f].names)} for f in self.LABEL_FEATURES}
    self.report.totals[split] += len(examples)
    seen, labels, tasks = set(), {}, []
    for example in examples:
      example_labels, error = self._check(example, seen)
      seen.add(example.id)
      if error:
        self.report.add(example.id, split, *error)
      else:
        labels[example.id] = example_labels
        tasks.append((example.id, example.load, example.args or (example.source,)))
    work = common.WorkDir(os.path.join(os.fspath(self.data_dir_root), self.name, "work", str(self.version),
                                       split))
    results = work.run(tasks, workers=self.workers, name=f"{self.name} {split}")
    good = []
    for key, _, _ in tasks:
      num_frames, reason = results[key]
      if num_frames is None:
        self.report.add(key, split, "unreadable video", reason)
      else:
        good.append((key, num_frames))
    self.report.write(os.path.join(os.fspath(self.data_path), REPORT))  # the version folder, once done
    print(self.report.summary(split), flush=True)
    for key, num_frames in good:  # report first: tfds may stop reading after max_examples_per_split
      data, ends = work.read(key)
      yield key, {"frames": data, "frame_ends": ends, "id": key, "num_frames": num_frames, **labels[key]}
