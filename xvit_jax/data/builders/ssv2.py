"""Something-Something v2 from the released label JSONs and .webm videos (manual download).

Class index = the index of the template in something-something-v2-labels.json (as
xvit_jax/labels/something_something_v2.txt); an entry's class is its `template` with the brackets
removed ("Putting [something] on [something]" -> "Putting something on something").
"""

import json
import os

from xvit_jax.data.builders import base
from xvit_jax.errors import UserError

LABEL_DIRS = ("", "labels", "annotations")
VIDEO_DIRS = ("20bn-something-something-v2", "something-something-v2", "videos", "")
SPLITS = {"train": "train", "validation": "validation", "test": "test"}

INSTRUCTIONS = """\
Put into the manual folder (--manual_dir):
  something-something-v2-labels.json and something-something-v2-{train,validation,test}.json
    (or labels.json, train.json, ... as in the newer release), directly or under labels/;
    optionally something-something-v2-test-answers.csv (or test-answers.csv: id;class per line);
  20bn-something-something-v2/ (or videos/): the videos {id}.webm.
"""


def find(manual_dir, name):
  """The path of `name` ("labels", "train", ...) in either naming, or None."""
  for parent in LABEL_DIRS:
    for file_name in (f"something-something-v2-{name}", name):
      for ext in (".json", ".csv"):
        path = os.path.join(manual_dir, parent, file_name + ext)
        if os.path.isfile(path):
          return path
  return None


def read_json(path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}") from None


def class_names(path):
  """Class names in index order from the labels JSON {name: "index"}."""
  labels = read_json(path)
  try:
    by_index = {int(index): name for name, index in labels.items()}
  except (AttributeError, TypeError, ValueError):
    raise UserError(f"{path} is not a {{class name: index}} object") from None
  if sorted(by_index) != list(range(len(labels))):
    raise UserError(f"{path}: the class indices are not 0..{len(labels) - 1}")
  return [by_index[i] for i in range(len(labels))]


def test_answers(manual_dir):
  path = find(manual_dir, "test-answers")
  if not path:
    return {}
  with open(path, encoding="utf-8") as f:
    return dict(line.rstrip("\n").split(";", 1) for line in f if ";" in line)


def video_index(manual_dir):
  """{id: path} of the .webm files of the first video folder that has any."""
  for name in VIDEO_DIRS:
    folder = os.path.join(manual_dir, name)
    if os.path.isdir(folder):
      found = {e.name[:-5]: e.path for e in os.scandir(folder) if e.name.endswith(".webm")}
      if found:
        return folder, found
  return os.path.join(manual_dir, VIDEO_DIRS[0]), {}


class SomethingSomethingV2(base.VideoBuilder):
  """Something-Something v2: 169k train / 25k validation / 27k test videos, 174 classes."""

  name = "something_something_v2"
  HOMEPAGE = "https://www.qualcomm.com/developer/software/something-something-v-2-dataset"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def read_annotations(self, manual_dir):
    labels_path = find(manual_dir, "labels")
    if not labels_path:
      raise UserError(f"no something-something-v2-labels.json or labels/labels.json in {manual_dir}; "
                      "the expected layout is in xvit_jax/data/builders/ssv2.py")
    names, answers = class_names(labels_path), test_answers(manual_dir)
    folder, videos = video_index(manual_dir)
    splits = {}
    for split, file_name in SPLITS.items():
      path = find(manual_dir, file_name)
      if path:
        entries = read_json(path)
        if not isinstance(entries, list):
          raise UserError(f"{path} is not a list of videos")
        splits[split] = [self._example(i, e, videos, folder, answers) for i, e in enumerate(entries)]
    if "train" not in splits and "validation" not in splits:
      raise UserError(f"no something-something-v2-train.json or -validation.json in {manual_dir}")
    return splits, {"label": names}

  def _example(self, i, entry, videos, folder, answers):
    if not isinstance(entry, dict) or not str(entry.get("id", "")).strip():
      return base.Example(id=f"entry{i}", labels={}, error=("bad annotation", f"entry {i}: {entry!r:.200}"))
    video_id = str(entry["id"]).strip()
    template = entry.get("template")
    if isinstance(template, str):
      label = template.replace("[", "").replace("]", "")
    else:
      label = answers.get(video_id)  # test entries have no template
    return base.Example(id=video_id, labels={"label": label}, source=videos.get(video_id),
                        missing=f"no {video_id}.webm in {folder}")
