"""EPIC-Kitchens-100 action segments from the official annotation CSVs (manual download).

Each record is one action segment (frames start_frame..stop_frame, 1-based, both included) with its
`verb` (97 classes) and `noun` (300 classes) labels, named by the `key` column of
EPIC_100_verb_classes.csv / EPIC_100_noun_classes.csv in `id` order. Frames come from the extracted
RGB frame folders {participant_id}/rgb_frames/{video_id}/frame_{index:010d}.jpg or, when a video has
no frame folder, from {participant_id}/videos/{video_id}.MP4 (frame i = the frame shown at (i - 1) / fps).
"""

import csv
import os
from fractions import Fraction

import av

from xvit_jax.data import video
from xvit_jax.data.builders import base, common
from xvit_jax.errors import UserError

ANNOTATION_DIRS = ("", "annotations", "epic-kitchens-100-annotations")
DATA_DIRS = ("EPIC-KITCHENS", "")
SPLITS = {"train": "EPIC_100_train.csv", "validation": "EPIC_100_validation.csv"}
DEFAULT_FPS = 50  # a video whose container states no frame rate

INSTRUCTIONS = """\
Put into the manual folder (--manual_dir):
  EPIC_100_train.csv, EPIC_100_validation.csv, EPIC_100_verb_classes.csv, EPIC_100_noun_classes.csv
    directly or under annotations/;
  {participant_id}/rgb_frames/{video_id}/frame_0000000001.jpg ... (the rgb_frames tars extracted)
    and/or {participant_id}/videos/{video_id}.MP4, directly or under EPIC-KITCHENS/.
"""


def read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def class_names(path):
  """Names (`key`) in `id` order from EPIC_100_{verb,noun}_classes.csv."""
  try:
    by_id = {int(row["id"]): row["key"] for row in read_csv(path)}
  except (KeyError, ValueError, TypeError) as e:
    raise UserError(f"{path}: expected columns id,key with integer ids ({e!r})") from None
  if sorted(by_id) != list(range(len(by_id))):
    raise UserError(f"{path}: the class ids are not 0..{len(by_id) - 1}")
  return [by_id[i] for i in range(len(by_id))]


def load_frames(folder, start, stop):
  """Frames start..stop of a frame folder (JPEGs decoded with PyAV), one at a time; UserError if any is
  missing (checked before the first is read)."""
  paths = [os.path.join(folder, f"frame_{i:010d}.jpg") for i in range(start, stop + 1)]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise UserError(f"missing frames: {len(missing)} of {len(paths)}, first {missing[0]}")
  outside = [p for p in paths if not base.inside(p, os.path.realpath(folder))]
  if outside:
    raise UserError(f"{outside[0]} resolves to {os.path.realpath(outside[0])}, outside its frame folder")
  return _frames_of(paths, folder, start, stop)


def _frames_of(paths, folder, start, stop):
  shape = None
  for path in paths:
    frame = video.decode(path)[0]
    if shape is not None and frame.shape != shape:
      raise UserError(f"frame size changes within {folder} frames {start}-{stop}")
    shape = frame.shape
    yield frame


def load_segment(path, start, stop):
  """Frames start..stop (1-based) of a video, seeking to the segment and resizing while decoding, one at a
  time (a segment of minutes is never whole in memory)."""
  try:
    with av.open(os.fspath(path)) as container:
      stream = container.streams.video[0]
      video.check_stream(stream, lambda reason: UserError(f"cannot decode video {path}: {reason}"))
      stream.thread_type = "AUTO"
      rate, time_base = stream.average_rate or Fraction(DEFAULT_FPS), stream.time_base
      first = stream.start_time or 0
      container.seek(first + int(Fraction(start - 1) / rate / time_base), stream=stream, backward=True)
      found = 0
      for frame in container.decode(stream):
        if frame.pts is None:
          continue
        index = round((frame.pts - first) * time_base * rate) + 1
        if index > stop:
          break
        if index >= start:
          height, width = common.target_size(frame.height, frame.width)
          found += 1
          yield frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
  except UserError:
    raise
  except (av.FFmpegError, OSError, IndexError, ValueError) as e:
    raise UserError(f"cannot decode video {path}: {' '.join(str(e).split())}") from None
  if not found:
    raise UserError(f"no frames {start}-{stop} in {path}")


class EpicKitchens100(base.VideoBuilder):
  """EPIC-Kitchens-100 action segments: 67k train / 10k validation, 97 verbs, 300 nouns."""

  name = "epic_kitchens_100"
  LABEL_FEATURES = ("verb", "noun")
  HOMEPAGE = "https://epic-kitchens.github.io/2025"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def read_annotations(self, manual_dir):
    annotations = next((os.path.join(manual_dir, d) for d in ANNOTATION_DIRS
                        if os.path.isfile(os.path.join(manual_dir, d, SPLITS["train"]))), None)
    if annotations is None:
      raise UserError(f"no {SPLITS['train']} in {manual_dir} or its annotations/ folder; "
                      "the expected layout is in xvit_jax/data/builders/epic_kitchens.py")
    names = {}
    for feature in self.LABEL_FEATURES:
      path = os.path.join(annotations, f"EPIC_100_{feature}_classes.csv")
      if not os.path.isfile(path):
        raise UserError(f"no {os.path.basename(path)} next to {SPLITS['train']} in {annotations}")
      names[feature] = class_names(path)
    root = next(os.path.join(manual_dir, d) for d in DATA_DIRS if os.path.isdir(os.path.join(manual_dir, d)))
    splits = {}
    for split, file_name in SPLITS.items():
      path = os.path.join(annotations, file_name)
      if os.path.isfile(path):
        splits[split] = [self._example(i, row, root) for i, row in enumerate(read_csv(path))]
    return splits, names

  def _example(self, i, row, root):
    try:
      narration_id, participant, video_id = (row[k].strip() for k in ("narration_id", "participant_id", "video_id"))
      start, stop = int(row["start_frame"]), int(row["stop_frame"])
      labels = {"verb": int(row["verb_class"]), "noun": int(row["noun_class"])}
      if not narration_id or start < 1 or stop < start or stop - start >= video.MAX_FRAMES:
        raise ValueError(f"frames {start}-{stop}" if narration_id else "empty narration_id")
      if not (base.plain_name(participant) and base.plain_name(video_id)):
        raise ValueError(f"participant_id {participant!r} and video_id {video_id!r} must be plain names")
    except (KeyError, ValueError, TypeError, AttributeError) as e:
      return base.Example(id=f"row{i + 2}", labels={}, error=("bad annotation", f"line {i + 2}: {e!r}"))
    frames = os.path.join(root, participant, "rgb_frames", video_id)
    if os.path.isdir(frames):
      return base.Example(id=narration_id, labels=labels, source=frames, load=load_frames,
                          args=(frames, start, stop))
    videos = os.path.join(root, participant, "videos")
    path = next((os.path.join(videos, video_id + e) for e in (".MP4", ".mp4")
                 if os.path.isfile(os.path.join(videos, video_id + e))), None)
    tar = " (extract the rgb_frames tar)" if os.path.exists(frames + ".tar") else ""
    return base.Example(id=narration_id, labels=labels, source=path, load=load_segment,
                        args=(path, start, stop), missing=f"neither {frames}/ nor {videos}/{video_id}.MP4{tar}")
