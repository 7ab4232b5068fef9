"""Dataset preparation end to end: tiny real datasets in each layout -> the prepare command -> tfds.data_source.

Good videos plus a corrupt, a truncated, a zero-length and a missing one, an unknown label, a duplicate id
and a malformed row: those are skipped and reported. Small videos are never upscaled; larger ones get short side 256.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import grey, grey_frames, grey_video, prepare, train_smoke, write_csv, write_video
from xvit_jax.data import sources, video
from xvit_jax.data.builders import common


def write_frames(folder, num):
  """EPIC-style frame_0000000001.jpg ... (64x48) written with PyAV's image2 muxer."""
  write_video(os.path.join(folder, "frame_%010d.jpg"), grey_frames(num, 48, 64, grey), codec="mjpeg", rate=50,
              pix_fmt="yuvj420p", format="image2", options={"start_number": "1"})


def write_bad_files(good, corrupt, truncated, empty):
  corrupt.write_bytes(np.random.default_rng(0).bytes(3000))
  truncated.write_bytes(good.read_bytes()[:400])
  empty.write_bytes(b"")


def read(tmp, name):
  """{split: {id: record}}, the info, and the report rows {id: (split, reason, detail)}."""
  sources = tfds.data_source(name, data_dir=str(tmp / "data"))
  records = {split: {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}
             for split, source in sources.items()}
  folder = tmp / "data" / name / "2.0.0"
  assert any(f.name.startswith(f"{name}-train.array_record") for f in folder.iterdir())
  lines = (folder / "bad_examples.tsv").read_text().splitlines()
  assert lines[0] == "id\tsplit\treason\tdetail"
  report = {line.split("\t")[0]: tuple(line.split("\t")[1:]) for line in lines[1:]}
  return records, tfds.builder(name, data_dir=str(tmp / "data")).info, report


def check_video(record, num, height=48, width=64):
  frames = sources.stored_frames(record)[np.arange(record["num_frames"])]  # JPEG frames, every one decoded
  assert frames.shape == (num, height, width, 3) and record["num_frames"] == num
  return frames


def test_kinetics400_flat_and_per_class_layouts_with_bad_examples_and_resume(tmp_path):
  m = tmp_path / "manual"
  good = grey_video(m / "train" / "aaa_000000_000010.mp4")
  grey_video(m / "train" / "bbb_000005_000015.mp4", height=300, width=400)  # stored at 256x340
  grey_video(m / "train" / "ccc_000001_000011.mp4", num=8, height=64, width=48)  # portrait
  write_bad_files(good, m / "train" / "ddd_000000_000010.mp4", m / "train" / "jjj_000000_000010.mp4",
                  m / "train" / "eee_000000_000010.mp4")
  grey_video(m / "val" / "abseiling" / "ggg_000002_000012.mp4")
  grey_video(m / "val" / "playing_guitar" / "hhh_000000_000010.mp4", num=10)
  grey_video(m / "val" / "skydiving" / "iii_000000_000010.mp4")
  os.symlink(grey_video(tmp_path / "elsewhere" / "lll_000000_000010.mp4"), m / "train" / "lll_000000_000010.mp4")
  header = ["label", "youtube_id", "time_start", "time_end", "split"]
  write_csv(m / "annotations" / "train.csv", header, [
      ["abseiling", "aaa", 0, 10, "train"], ["zumba", "bbb", 5, 15, "train"],
      ["playing guitar", "ccc", 1, 11, "train"], ["abseiling", "ddd", 0, 10, "train"],
      ["zumba", "jjj", 0, 10, "train"], ["zumba", "eee", 0, 10, "train"], ["zumba", "fff", 0, 10, "train"],
      ["abseiling", "aaa", 0, 10, "train"], ["zumba", "kkk", "soon", 10, "train"],
      ["zumba", "../../elsewhere/lll", 0, 10, "train"], ["zumba", "lll", 0, 10, "train"]])
  write_csv(m / "annotations" / "validate.csv", header, [
      ["abseiling", "ggg", 2, 12, "validate"], ["playing guitar", "hhh", 0, 10, "validate"],
      ["skydiving", "iii", 0, 10, "validate"]])

  output, first = prepare(tmp_path, "kinetics400")
  assert "kinetics400 train: skipped 8 of 11 examples" in output and "kinetics400: skipped 9 of 14 examples" in output
  records, info, report = read(tmp_path, "kinetics400")
  assert info.features["label"].names == ["abseiling", "playing guitar", "zumba"]
  train, val = records["train"], records["validation"]
  assert {k: r["label"] for k, r in train.items()} == {"aaa_000000_000010": 0, "bbb_000005_000015": 2,
                                                       "ccc_000001_000011": 1}
  assert {k: r["label"] for k, r in val.items()} == {"ggg_000002_000012": 0, "hhh_000000_000010": 1}
  frames = check_video(train["aaa_000000_000010"], 12)
  np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [grey(i) for i in range(12)], atol=3)
  check_video(train["bbb_000005_000015"], 12, 256, 340)  # 300x400: short side 256
  check_video(train["ccc_000001_000011"], 8, 64, 48)
  check_video(val["hhh_000000_000010"], 10)
  reasons = {key: value[1] for key, value in report.items()}
  assert reasons == {"ddd_000000_000010": "unreadable video", "jjj_000000_000010": "unreadable video",
                     "eee_000000_000010": "empty file", "fff_000000_000010": "missing video",
                     "aaa_000000_000010": "duplicate id", "row10": "bad annotation",
                     "iii_000000_000010": "unknown label", "../../elsewhere/lll_000000_000010": "unsafe id",
                     "lll_000000_000010": "outside the manual folder"}  # a symbolic link out of it: never read
  assert report["iii_000000_000010"][0] == "validation" and "skydiving" in report["iii_000000_000010"][2]
  assert "cannot decode video" in report["ddd_000000_000010"][2]

  shutil.rmtree(tmp_path / "data" / "kinetics400" / "2.0.0")  # as if the run stopped before writing
  output, second = prepare(tmp_path, "kinetics400")
  assert "kinetics400 train: 5 videos, 5 already done" in output and "0 to encode" in output
  assert "kinetics400: skipped 9 of 14 examples" in output
  assert second < first
  again = read(tmp_path, "kinetics400")
  assert [sorted(r) for r in again[0].values()] == [sorted(r) for r in records.values()] and again[2] == report
  assert "already prepared" in prepare(tmp_path, "kinetics400")[0]


def test_kinetics600_per_class_train_flat_validate_unlabelled_test_and_max_examples(tmp_path):
  m = tmp_path / "manual"
  for path in ["train/abseiling/aaa", "train/zumba/bbb", "train/zumba/ccc", "validate/ddd", "test/eee"]:
    grey_video(m / f"{path}_000000_000010.mp4")
  header = ["label", "youtube_id", "time_start", "time_end", "split"]
  write_csv(m / "train.csv", header, [["abseiling", "aaa", 0, 10, "train"], ["zumba", "bbb", 0, 10, "train"],
                                      ["zumba", "ccc", 0, 10, "train"]])
  write_csv(m / "validate.csv", header, [["zumba", "ddd", 0, 10, "validate"]])
  write_csv(m / "test.csv", header[1:], [["eee", 0, 10, "test"]])
  output, _ = prepare(tmp_path, "kinetics600", "--max_examples_per_split=2")
  assert "has 2 classes, kinetics600 has 600" in output
  records, info, report = read(tmp_path, "kinetics600")
  assert {s: len(r) for s, r in records.items()} == {"train": 2, "validation": 1, "test": 1}
  assert records["test"]["eee_000000_000010"]["label"] == -1 and report == {}
  assert info.features["label"].names == ["abseiling", "zumba"]


def test_something_something_v2(tmp_path):
  m, videos = tmp_path / "manual", tmp_path / "manual" / "20bn-something-something-v2"
  names = ["Approaching something with your camera", "Putting something on something",
           "Pushing something from left to right"]
  for i, num in [(1, 12), (2, 9), (5, 12), (7, 12), (8, 6)]:
    grey_video(videos / f"{i}.webm", num=num, codec="libvpx-vp9")
  write_bad_files(videos / "1.webm", videos / "3.webm", videos / "9.webm", videos / "4.webm")
  os.symlink(grey_video(tmp_path / "elsewhere" / "10.webm", codec="libvpx-vp9"), videos / "10.webm")
  (m / "something-something-v2-labels.json").write_text(json.dumps({n: str(i) for i, n in enumerate(names)}))
  entry = lambda i, template: {"id": str(i), "label": "x", "template": template, "placeholders": ["x"]}
  train = [entry(1, "Putting [something] on [something]"), entry(2, "Approaching [something] with your camera"),
           entry(3, "Putting [something] on [something]"), entry(4, "Pushing [something] from left to right"),
           entry(5, "Juggling [something]"), entry(6, "Putting [something] on [something]"),
           entry(1, "Putting [something] on [something]"), {"label": "no id"},
           entry("../../elsewhere/10", names[1]), entry(10, names[1])]
  (m / "something-something-v2-train.json").write_text(json.dumps(train))
  (m / "something-something-v2-validation.json").write_text(json.dumps([entry(7, names[2])]))
  (m / "something-something-v2-test.json").write_text(json.dumps([{"id": "8"}]))

  output, _ = prepare(tmp_path, "something_something_v2")
  assert "something_something_v2 train: skipped 8 of 10 examples" in output
  records, info, report = read(tmp_path, "something_something_v2")
  assert info.features["label"].names == names
  labels = {split: {k: r["label"] for k, r in split_records.items()} for split, split_records in records.items()}
  assert labels == {"train": {"1": 1, "2": 0}, "validation": {"7": 2}, "test": {"8": -1}}
  check_video(records["train"]["2"], 9)
  check_video(records["test"]["8"], 6)
  assert {k: v[1] for k, v in report.items()} == {"3": "unreadable video", "4": "empty file", "5": "unknown label",
                                                 "6": "missing video", "1": "duplicate id", "entry7": "bad annotation",
                                                 "../../elsewhere/10": "unsafe id", "10": "outside the manual folder"}
  assert train_smoke(tmp_path, "configs/ssv2.py")[-1]["eval/videos"] == 1


def test_epic_kitchens_100_frame_folders_and_videos(tmp_path):
  m = tmp_path / "manual"
  for kind, num in [("verb", 97), ("noun", 300)]:
    write_csv(m / f"EPIC_100_{kind}_classes.csv", ["id", "key", "instances", "category"],
              [[i, f"{kind}{i}", "[]", "x"] for i in range(num)])
  write_frames(m / "P01" / "rgb_frames" / "P01_01", 30)
  grey_video(m / "P02" / "videos" / "P02_01.MP4", num=40, height=300, width=400, rate=50)
  write_frames(tmp_path / "elsewhere" / "P04_01", 10)
  os.makedirs(m / "P04" / "rgb_frames")
  os.symlink(tmp_path / "elsewhere" / "P04_01", m / "P04" / "rgb_frames" / "P04_01")
  header = ["narration_id", "participant_id", "video_id", "start_frame", "stop_frame", "verb_class", "noun_class"]
  write_csv(m / "EPIC_100_train.csv", header, [
      ["P01_01_0", "P01", "P01_01", 1, 10, 0, 1], ["P01_01_1", "P01", "P01_01", 11, 30, 3, 299],
      ["P02_01_0", "P02", "P02_01", 5, 14, 96, 0], ["P01_01_2", "P01", "P01_01", 25, 40, 1, 1],
      ["P01_01_3", "P01", "P01_01", 1, 5, 120, 1], ["P01_01_0", "P01", "P01_01", 1, 10, 0, 1],
      ["P03_01_0", "P03", "P03_01", 1, 10, 0, 1], ["P01_01_4", "P01", "P01_01", 9, 3, 0, 1],
      ["P01_01_5", "../../elsewhere", "P04_01", 1, 5, 0, 1], ["P04_01_0", "P04", "P04_01", 1, 5, 0, 1]])
  write_csv(m / "EPIC_100_validation.csv", header, [["P01_01_100", "P01", "P01_01", 1, 5, 2, 2]])

  output, _ = prepare(tmp_path, "epic_kitchens_100")
  assert "epic_kitchens_100 train: skipped 7 of 10 examples" in output
  records, info, report = read(tmp_path, "epic_kitchens_100")
  assert info.features["verb"].names[96] == "verb96" and len(info.features["noun"].names) == 300
  train = records["train"]
  expected = {"P01_01_0": (0, 1), "P01_01_1": (3, 299), "P02_01_0": (96, 0)}
  assert {k: (r["verb"], r["noun"]) for k, r in train.items()} == expected
  assert list(records["validation"]) == ["P01_01_100"]
  frames = check_video(train["P01_01_1"], 20)
  np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [grey(i) for i in range(10, 30)], atol=4)
  frames = check_video(train["P02_01_0"], 10, 256, 340)  # frames 5..14 of the 300x400 video, resized
  np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [grey(i) for i in range(4, 14)], atol=3)
  assert {k: v[1] for k, v in report.items()} == {
      "P01_01_2": "unreadable video", "P01_01_3": "unknown label", "P01_01_0": "duplicate id",
      "P03_01_0": "missing video", "row9": "bad annotation", "row10": "bad annotation",
      "P04_01_0": "outside the manual folder"}
  assert "must be plain names" in report["row10"][2]
  assert "missing frames: 10 of 16" in report["P01_01_2"][2]
  last = train_smoke(tmp_path, "configs/epic100.py")[-1]
  assert {"eval/verb_top1", "eval/noun_top1", "eval/top1"} <= set(last) and last["eval/videos"] == 1
  assert {"final/verb_top1", "final/noun_top1", "final/top1"} <= set(last)  # the final model: action and heads
  assert last["final/action_top1"] == last["final/top1"]


@pytest.mark.parametrize("name", ["kinetics600", "something_something_v2", "epic_kitchens_100"])
def test_a_manual_folder_without_annotations_is_a_one_line_error(tmp_path, name):
  write_csv(tmp_path / "manual" / "readme.csv", ["not the dataset"], [])
  error = prepare(tmp_path, name, returncode=2)[0]
  assert error.startswith("error: no ") and error.count("\n") == 1, error
  assert not (tmp_path / "data" / name / "2.0.0").exists()


def crash(*_):
  os._exit(3)  # a worker that dies (as a segfault or an out-of-memory kill would)


def test_a_dying_worker_fails_only_its_video_and_is_retried_by_the_next_run(tmp_path):
  good = str(grey_video(tmp_path / "good.mp4"))
  work = common.WorkDir(tmp_path / "work")
  tasks = [("a", common.load_video, (good,)), ("crash", crash, ()), ("b", common.load_video, (good,))]
  results = work.run(tasks, workers=2, name="test")
  assert results["a"] == results["b"] == (12, "") and results["crash"][1].startswith("worker process died")
  assert video.JpegFrames(*work.read("a"), name="a")[np.arange(12)].shape == (12, 48, 64, 3)
  assert set(common.WorkDir(tmp_path / "work").done) == {"a", "b"}  # the crash is not cached


def test_target_size_keeps_the_aspect_never_upscales_and_is_even():
  sizes = {(300, 400): (256, 340), (1080, 1920): (256, 454), (640, 360): (454, 256), (256, 340): (256, 340),
           (48, 64): (48, 64), (47, 63): (46, 62)}
  assert {size: common.target_size(*size) for size in sizes} == sizes


def test_eval_windows_hold_what_the_builders_store():
  """sources.EvalViews cuts windows for frames of short side at most sources.SHORT_SIDE (a copy: importing the
  builders imports TFDS, which checking a config must not): the builders' own bound."""
  assert sources.SHORT_SIDE == common.SHORT_SIDE
