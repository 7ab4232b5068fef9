"""Where clips come from: the built-in synthetic task or a dataset prepared by `xvit_jax.data.prepare`,
and how one record becomes the pixels of a clip (train: decode, sample, augment: uint8; eval: the official
views' windows of uint8 pixels and resize taps). Normalisation, erasing, mixup and the eval resize happen on
the device (xvit_jax.preprocess).

Records of prepared datasets (tfds.data_source) hold {"frames": JPEG files one after another, "frame_ends":
int64 (num_frames,), "label": int, "id": str, "num_frames": int} (format 2.0.0: only the sampled frames are
decoded) or, prepared before 2026-12 (format 1.0.0), {"video": h264 mp4 bytes, ...}, still read by decoding
the whole video. A record that cannot be decoded, or has fewer than 3 frames (as the official loaders
skip such videos), is replaced in training by the next readable record of the shuffled order (with a
warning, counted in `train/bad_records`: see pipeline.py) and counted in evaluation (`eval/skipped`), never
a crash; predict refuses it in one line. The synthetic task has no unreadable records.
"""

import ctypes
import ctypes.util
import os

import numpy as np
from absl import logging

from xvit_jax.data import label_heads, synthetic, video
from xvit_jax.errors import UserError

SYNTHETIC = "synthetic"
SHORT_SIDE = 256  # prepared frames' short side at most: builders.common.SHORT_SIDE (tested), whose package imports TFDS


def source(config, split):
  """A random-access source for split "train" or "eval" of config.data: the synthetic task, or the newest
  version of the prepared dataset in config.data.data_dir, read as it is on disk (never prepared here)."""
  data = config.data
  if data.name == SYNTHETIC:
    return synthetic.from_config(config, split)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  name = data.train_split if split == "train" else data.eval_split
  root = os.path.join(data.data_dir or tfds.core.constants.DATA_DIR, data.name)
  versions = [v for v in (os.listdir(root) if os.path.isdir(root) else ())
              if tfds.core.Version.is_valid(v) and os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
  try:
    newest = max(versions, key=tfds.core.Version)
    prepared = tfds.builder_from_directory(os.path.join(root, newest)).as_data_source(split=name)
  except Exception as e:  # noqa: BLE001 - anything here means the dataset is not prepared where we look
    raise UserError(f"dataset {data.name} split {name!r} is not prepared in config.data.data_dir={data.data_dir!r} "
                    f"({type(e).__name__}); run python -m xvit_jax.data.prepare --dataset={data.name} ...") from None
  if tfds.core.Version(newest) < tfds.core.Version("2.0.0"):
    logging.warning("dataset %s in %s is in format %s (one h264 video per record: every frame is decoded to "
                    "use a few); python -m xvit_jax.data.prepare --dataset=%s writes format 2.0.0 beside it, "
                    "which decodes only the sampled frames", data.name, root, newest, data.name)
  return prepared


def _labels(record, fields):
  """The record's label (int32), or its labels in head order (int32 (heads,)) for several heads."""
  if len(fields) == 1:
    return np.int32(record[fields[0]])
  return np.array([record[name] for name in fields], np.int32)


def read(path_or_bytes, *, name=None):
  """The frames of a video file (a path, or its bytes and their `name`), as video.decode gives them;
  UserError naming it if it cannot be decoded or has fewer than video.MIN_FRAMES frames: the one rule
  for unreadable videos in training, evaluation and predict."""
  frames = video.decode(path_or_bytes, name=name)
  video.check_readable(len(frames), name or os.fspath(path_or_bytes))
  return frames


def record_name(record):
  """The record's id, as error messages name it."""
  name = record.get("id", b"?")
  return name.decode() if isinstance(name, bytes) else str(name)


def stored_frames(record):
  """The frames of a prepared record, indexable by an array of frame indices: video.JpegFrames (format 2.0.0,
  decoding only the frames indexed) or the whole decoded video (format 1.0.0). UserError naming the record
  if it is unreadable or has fewer than video.MIN_FRAMES frames; a JPEG frame that is damaged raises when read."""
  name = record_name(record)
  if "frames" not in record:
    return read(record["video"], name=name)
  frames = video.JpegFrames(record["frames"], record["frame_ends"], name)
  video.check_readable(len(frames), name)
  return frames


# glibc's malloc serves a block over 128 KiB (raised as freed ones grow, up to 32 MiB) with a fresh mmap and
# gives the memory back when it is freed, so every record (a Kinetics clip's is 5 MB) and every frame array
# comes in untouched pages that the kernel faults in and zeroes one 4 KiB page at a time: measured here, 75%
# of reading a record and 15-30% of a worker's whole time per clip. A worker instead keeps what it frees for
# the next record: its memory stays at its peak (tens of MB), the usual price of an allocator that reuses.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
_kept_in = None


def keep_freed_memory():
  """Makes malloc in this process reuse freed memory rather than return it to the kernel (blocks up to
  32 MiB from the heap, 1 GiB kept free before trimming); once per process, glibc only (elsewhere nothing
  happens). Called by TrainClip and EvalViews, so it holds in every data worker."""
  global _kept_in
  if _kept_in == os.getpid():
    return
  _kept_in = os.getpid()
  name = ctypes.util.find_library("c")
  libc = ctypes.CDLL(name) if name else None
  if libc is not None and hasattr(libc, "gnu_get_libc_version"):  # glibc, which has mallopt
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def _unreadable(e):
  logging.warning("unreadable record: %s", e)


class TrainClip:
  """record, rng -> {"video": uint8 (T, S, S, 3), "label": int32, and with augment.random_erasing > 0 "erase":
  int32 (4,), the box (top, left, h, w) to set to mid-grey after normalisation}, or None if unreadable (the
  pipeline then replaces the record). Pixels stay uint8 to the device, where xvit_jax.preprocess makes
  them the model's input. The synthetic task's clips are taken as they are (no augmentation)."""

  def __init__(self, config):
    d, m, a = config.data, config.model, config.augment
    self.synthetic = d.name == SYNTHETIC
    self.fields = [name for name, _ in label_heads(config)[0]]
    self.num_frames, self.image_size, self.sampling, self.stride = m.num_frames, m.image_size, d.sampling, d.stride
    self.augment = dict(multiscale=a.multiscale_crop, short_side_range=tuple(a.short_side_range), flip_p=a.flip,
                        autoaugment=a.autoaugment, erasing_p=a.random_erasing)
    self.erasing = a.random_erasing > 0

  def __call__(self, record, rng):
    if self.synthetic:
      return {"video": np.asarray(record["video"], np.uint8), "label": np.int32(record["label"])}
    keep_freed_memory()
    from xvit_jax.data import transforms  # pylint: disable=import-outside-toplevel
    try:
      frames = stored_frames(record)
      if self.sampling == "dense":
        index = video.dense_random_indices(len(frames), self.num_frames, self.stride, rng)
      else:
        index = video.segment_random_indices(len(frames), self.num_frames, rng)
      sampled = frames[index]
    except UserError as e:
      return _unreadable(e)
    clip, box = transforms.augment_clip(sampled, rng, image_size=self.image_size, **self.augment)
    return {"video": clip, "label": _labels(record, self.fields), **({"erase": box} if self.erasing else {})}


class EvalViews:
  """record -> the views config.eval describes, as evaluation cuts them: video.view_windows' {"video": uint8
  windows (views, T, window, window, 3), "rows", "row_weights", "cols", "col_weights"}, with "label" and "mask"
  (1; 0 if unreadable). The device finishes the official test resize (xvit_jax.preprocess.eval_views), so the
  pixels cross as uint8. Windows hold the crops of frames with a short side up to 256, as prepared datasets store
  them (builders.common.SHORT_SIDE); the synthetic task's clips are one view, their own window. `of_frames`
  and `of_file` give predict's float32 views, cut on the host (video.eval_views)."""

  def __init__(self, config):
    m, e = config.model, config.eval
    self.synthetic = config.data.name == SYNTHETIC
    self.fields = [name for name, _ in label_heads(config)[0]]
    self.kwargs = dict(num_frames=m.num_frames, image_size=m.image_size, sampling=e.sampling, stride=e.stride,
                       temporal_views=e.temporal_views, spatial_crops=e.spatial_crops)
    self.views = 1 if self.synthetic else e.temporal_views * e.spatial_crops
    self.window = m.image_size if self.synthetic else video.window_size(SHORT_SIDE)

  def specs(self):
    """{key: (shape, dtype)} of one video's views in an eval batch (the pixels and taps; not label and mask)."""
    taps = (self.views, self.kwargs["image_size"], 2)
    return {"video": ((self.views, self.kwargs["num_frames"], self.window, self.window, 3), np.uint8),
            "rows": (taps, np.int32), "row_weights": (taps, np.float32), "cols": (taps, np.int32),
            "col_weights": (taps, np.float32)}

  def __call__(self, record):
    if self.synthetic:
      return {**video.unresized_view(record["video"]), "label": np.int32(record["label"]), "mask": np.float32(1)}
    keep_freed_memory()
    try:
      views = video.view_windows(stored_frames(record), **self.kwargs, window=self.window,
                                 name=record_name(record))
    except UserError as e:
      _unreadable(e)
      return self.blank(bad=True)
    return {**views, "label": _labels(record, self.fields), "mask": np.float32(1)}

  def of_frames(self, frames):
    """(views, T, S, S, 3) float32 pixels in [0, 255] of decoded frames (N, H, W, 3) uint8 (or video.JpegFrames)."""
    return video.eval_views(frames, **self.kwargs)

  def of_file(self, path):
    """(views, T, S, S, 3) of the video file at `path`; UserError if it is unreadable (see `read`)."""
    return self.of_frames(read(path))

  def blank(self, bad=False):
    """A stand-in: padding of the last batch (bad=False) or an unreadable video (bad=True)."""
    label = np.zeros(len(self.fields), np.int32) if len(self.fields) > 1 else np.int32(0)
    return {**{key: np.zeros(shape, dtype) for key, (shape, dtype) in self.specs().items()}, "label": label,
            "mask": np.float32(0), "bad": np.float32(bad)}
