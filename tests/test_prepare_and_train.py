"""A user's whole path on a real (tiny) dataset: prepare Kinetics-400 from its distributed layout, then
train and evaluate `configs/k400.py:smoke` on it, as the README says."""

import numpy as np
import tensorflow_datasets as tfds

from conftest import grey_video, load_config, prepare, run_module, train_smoke, write_csv
from xvit_jax.data import sources, video
from xvit_jax.data.builders import common, kinetics


def kinetics_manual_folder(m):
  """Four training clips and two validation ones (one broken) in the distributed Kinetics layout."""
  rows = []
  for i, label in enumerate(["abseiling", "zumba", "abseiling", "zumba"]):
    grey_video(m / "train" / f"t{i}_000000_000010.mp4", num=20)
    rows.append([label, f"t{i}", 0, 10, "train"])
  header = ["label", "youtube_id", "time_start", "time_end", "split"]
  write_csv(m / "annotations" / "train.csv", header, rows)
  grey_video(m / "val" / "v0_000000_000010.mp4", num=20)
  (m / "val" / "v1_000000_000010.mp4").write_bytes(b"broken")  # reported at preparation, skipped
  write_csv(m / "annotations" / "validate.csv", header, [["zumba", "v0", 0, 10, "validate"],
                                                         ["abseiling", "v1", 0, 10, "validate"]])


def test_prepare_kinetics_then_train_and_evaluate_on_it(tmp_path):
  kinetics_manual_folder(tmp_path / "manual")
  output, _ = prepare(tmp_path, "kinetics400")
  assert "skipped 1 of 6" in output

  last = train_smoke(tmp_path, "configs/k400.py")[-1]
  assert last["step"] == 3 and last["eval/videos"] == 1 and last["eval/skipped"] == 0
  assert 0 <= last["eval/top1"] <= last["eval/top5"] <= 1

  missing = run_module("xvit_jax.main", "--config=configs/ssv2.py", f"--workdir={tmp_path / 'run2'}",
                       f"--config.data.data_dir={tmp_path / 'data'}", "--config.init_from=scratch")
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1].startswith(
      "error: dataset something_something_v2 split 'train' is not prepared in config.data.data_dir=")


class Kinetics400Format1(kinetics.Kinetics400, skip_registration=True):
  """Kinetics-400 as `prepare` wrote it before 2026-12 (format 1.0.0): one h264 mp4 per record."""

  name = "kinetics400"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    features = {"video": tfds.features.Tensor(shape=(), dtype=np.object_), "id": tfds.features.Text(),
                "num_frames": tfds.features.Scalar(np.int32), "label": tfds.features.ClassLabel()}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _generate_examples(self, split, examples):  # pylint: disable=arguments-differ
    for key, record in super()._generate_examples(split, examples):
      frames = video.JpegFrames(record.pop("frames"), record.pop("frame_ends"), key)
      yield key, {**record, "video": common.encode_h264(frames[np.arange(len(frames))])}


def test_a_dataset_prepared_in_the_old_format_still_trains_and_a_new_preparation_is_read_beside_it(tmp_path):
  kinetics_manual_folder(tmp_path / "manual")
  tfds.disable_progress_bar()
  old = Kinetics400Format1(data_dir=str(tmp_path / "data"), workers=1)
  old.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")),
                           file_format="array_record")
  config = load_config("configs/k400.py", "smoke")
  config.data.data_dir = str(tmp_path / "data")
  assert "video" in sources.source(config, "train")[0]  # format 1.0.0, the only one there
  last = train_smoke(tmp_path, "configs/k400.py")[-1]
  assert last["step"] == 3 and last["eval/videos"] == 1 and last["train/bad_records"] == 0

  prepare(tmp_path, "kinetics400")  # the command the warning names: format 2.0.0 beside the old one
  record = sources.source(config, "train")[0]
  assert "frames" in record and "video" not in record
  assert sorted(p.name for p in (tmp_path / "data" / "kinetics400").iterdir()) == ["1.0.0", "2.0.0", "work"]
