"""Kinetics-400 and Kinetics-600 from the distributed annotation CSVs and clips (manual download).

Class index = position in the alphabetically sorted (Python `sorted`) class names of the train CSV,
the SlowFast convention (xvit_jax/labels/kinetics600.txt for Kinetics-600).
"""

import csv
import os

from xvit_jax.data.builders import base
from xvit_jax.errors import UserError

ANNOTATION_DIRS = ("annotations", "")
# split -> accepted names of its annotation CSV and of its video folder
SPLITS = {"train": ("train",), "validation": ("validate", "val", "validation"), "test": ("test",)}
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")

INSTRUCTIONS = """\
Put into the manual folder (--manual_dir):
  annotations/train.csv, annotations/validate.csv (or val.csv), optionally annotations/test.csv
    with columns label,youtube_id,time_start,time_end,split (test may lack label); the CSVs may also
    lie directly in the manual folder;
  train/, val/ (or validate/), test/: the clips {youtube_id}_{time_start:06d}_{time_end:06d}.mp4,
    either flat or one folder per class (.webm/.mkv are accepted too).
"""


def clip_name(row):
  """The file stem of an annotation row's clip; ValueError or KeyError for a malformed row."""
  start, end = int(float(row["time_start"])), int(float(row["time_end"]))
  youtube_id = row["youtube_id"].strip()
  if not youtube_id:
    raise ValueError("empty youtube_id")
  return f"{youtube_id}_{start:06d}_{end:06d}"


def read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def index_videos(folder):
  """{file stem: path} of the videos under `folder`, flat or in class subfolders (first one wins)."""
  found = {}
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower() in VIDEO_EXTENSIONS:
        found.setdefault(stem, os.path.join(root, name))
  return found


def find(manual_dir, parents, names, suffix=""):
  for parent in parents:
    for name in names:
      path = os.path.join(manual_dir, parent, name + suffix)
      if os.path.exists(path):
        return path
  return None


class _Kinetics(base.VideoBuilder, skip_registration=True):
  """Kinetics: 10 s YouTube clips of human actions (manual download)."""

  NUM_CLASSES = None
  HOMEPAGE = "https://github.com/cvdfoundation/kinetics-dataset"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def read_annotations(self, manual_dir):
    csvs = {split: find(manual_dir, ANNOTATION_DIRS, names, ".csv") for split, names in SPLITS.items()}
    if not csvs["train"]:
      raise UserError(f"no annotations/train.csv or train.csv in {manual_dir} (it gives the class list); "
                      "the expected layout is in xvit_jax/data/builders/kinetics.py")
    rows = {split: read_csv(path) for split, path in csvs.items() if path}
    classes = sorted({r["label"].strip() for r in rows["train"] if (r.get("label") or "").strip()})
    if not classes:
      raise UserError(f"{csvs['train']} has no labels (it needs a 'label' column)")
    if self.NUM_CLASSES and len(classes) != self.NUM_CLASSES:
      print(f"warning: {csvs['train']} has {len(classes)} classes, {self.name} has {self.NUM_CLASSES};"
            " class indices follow the classes found", flush=True)
    splits = {}
    for split, split_rows in rows.items():
      folder = find(manual_dir, ("", "videos"), SPLITS[split])
      videos = index_videos(folder) if folder else {}
      where = folder or f"{manual_dir}/{{{','.join(SPLITS[split])}}}"
      splits[split] = [self._example(i, row, videos, where) for i, row in enumerate(split_rows)]
    return splits, {"label": classes}

  def _example(self, i, row, videos, where):
    try:
      name = clip_name(row)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
      return base.Example(id=f"row{i + 2}", labels={}, error=("bad annotation", f"line {i + 2}: {e!r}"))
    label = (row.get("label") or "").strip() or None
    return base.Example(id=name, labels={"label": label}, source=videos.get(name),
                        missing=f"no {name}.mp4 under {where}")


class Kinetics400(_Kinetics):
  """Kinetics-400: ~240k train / 20k validation clips, 400 classes (manual download)."""
  name = "kinetics400"
  NUM_CLASSES = 400


class Kinetics600(_Kinetics):
  """Kinetics-600: ~390k train / 30k validation clips, 600 classes (manual download)."""
  name = "kinetics600"
  NUM_CLASSES = 600
