"""A user's whole path on a real (tiny) dataset: prepare Kinetics-400 from its distributed layout, then
train and evaluate `configs/k400.py:smoke` on it, as the README says."""

from conftest import grey_video, prepare, run_module, train_smoke, write_csv


def test_prepare_kinetics_then_train_and_evaluate_on_it(tmp_path):
  m = tmp_path / "manual"
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
