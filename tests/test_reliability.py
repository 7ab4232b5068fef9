"""Faults a long run meets, each as it happens, through `python -m xvit_jax.main`: NaN/Inf steps, a
checkpoint write that fails, a damaged checkpoint, a second run on the same workdir. Each ends in one
line naming the culprit, and what was saved before stays intact and restorable."""

import errno
import os
import shutil
import time

import jax
import numpy as np
import pytest

from conftest import final_params, last_line, read_metrics, run_main, saved_steps, start_main, train_main, wait_for
from xvit_jax.errors import UserError

@pytest.fixture(scope="module")
def saved_at_2(tmp_path_factory):
  """A workdir trained 2 steps and saved there (in this process), and its parameters."""
  workdir = tmp_path_factory.mktemp("saved_at_2")
  train_main(workdir, "--config.total_steps=2", "--config.checkpoint_every=2")
  return workdir, final_params(workdir)


def copy_of(saved, tmp_path):
  shutil.copytree(saved[0], tmp_path, dirs_exist_ok=True)
  return saved[1]


DIVERGE = ["--config.optimizer.learning_rate=1e5", "--config.optimizer.warmup_steps=0", "--config.eval_every=0"]


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, saved_at_2):
  kept = copy_of(saved_at_2, tmp_path)

  diverged = run_main(tmp_path, "--config.total_steps=10", *DIVERGE)
  assert diverged.returncode == 2
  line = last_line(diverged)
  assert line.startswith("error: the loss or gradients became NaN/Inf at step ") and "newest checkpoint: step 2" in line
  assert len(diverged.stderr.strip().splitlines()) == 1
  assert saved_steps(tmp_path) == [2]
  for a, b in zip(jax.tree.leaves(final_params(tmp_path)), jax.tree.leaves(kept)):
    assert np.array_equal(a, b)


def test_nonfinite_skip_counts_the_steps_and_never_applies_them(tmp_path):
  stdout, _ = train_main(tmp_path, "--config.total_steps=6", "--config.log_every=3", "--config.nonfinite=skip",
                         *DIVERGE)
  records = read_metrics(tmp_path)
  assert records[-1]["train/nonfinite_steps"] >= 1
  assert "non-finite steps skipped" in stdout
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(final_params(tmp_path)))


def test_a_write_error_keeps_its_reason_when_tensorstore_appends_its_spec():
  """tensorstore ends some errors with payloads ([os_error_code=...], [tensorstore_spec='{...}'], its JSON a
  kilobyte long): the one-line error keeps the OS's reason, which cutting the middle of the whole line lost."""
  from xvit_jax import checkpoints  # pylint: disable=import-outside-toplevel
  where = "/tmp/run/checkpoints/3.orbax-checkpoint-tmp/train.orbax-checkpoint-tmp/ocdbt.process_0/d/" + "f" * 32
  spec = '{"context":{"file_io_concurrency":{"limit":128}},' + '"x":1,' * 200 + '"store_data_equal_to_fill_value":true}'
  error = ValueError(f'OUT_OF_RANGE: Error writing "opt_state/0/trace" in OCDBT database at local file "{where}": '
                     "Failed to write 17408 bytes to file 17: File too large [os_error_code='27'] "
                     f"[source locations='tensorstore/internal/os/file_util_posix.cc:312'] [tensorstore_spec='{spec}']")
  line = checkpoints._first_line(error)
  assert "File too large" in line and "tensorstore_spec" not in line and len(line) <= 405
  assert line.startswith("OUT_OF_RANGE: Error writing")


def test_a_failed_checkpoint_write_stops_the_run_and_the_previous_checkpoint_survives(tmp_path, saved_at_2):
  """A write that fails mid-checkpoint: files over 16 KiB are refused (EFBIG), as a full disk refuses them. The
  limit is under the size of the train state's _METADATA file (17 kB for the tiny model) so that every checkpoint
  write fails: orbax's data files are split in varying ways (all under 40 KiB in some runs)."""
  kept = copy_of(saved_at_2, tmp_path)

  limited = ["bash", "-c", 'ulimit -f 16 && exec "$@"', "bash"]  # 16 blocks of 1 KiB
  failed = run_main(tmp_path, "--config.total_steps=4", "--config.checkpoint_every=1", wrapper=limited)
  assert failed.returncode == 2
  [line] = [l for l in failed.stderr.splitlines() if l.startswith("error: ")]  # orbax's own log comes before it
  assert line.startswith(f"error: writing a checkpoint in {tmp_path / 'checkpoints'} failed: ")
  assert "File too large" in line and "the newest complete checkpoint (step 2) is intact" in line
  assert saved_steps(tmp_path) == [2]  # the unfinished step is a temporary directory, never a step
  for a, b in zip(jax.tree.leaves(final_params(tmp_path)), jax.tree.leaves(kept)):
    assert np.array_equal(a, b)

  resumed, _ = train_main(tmp_path, "--config.total_steps=4")  # the same command, once the disk is fixed
  assert "resumed from" in resumed and "/checkpoints/2 " in resumed
  assert not [name for name in os.listdir(tmp_path / "checkpoints") if "tmp" in name]  # the leftover is cleaned up
  assert saved_steps(tmp_path)[-1] == 4
  assert (tmp_path / "checkpoints" / "4" / "train" / "_METADATA").stat().st_size > 16 * 1024  # the premise above


def test_a_damaged_checkpoint_is_named_and_nothing_is_written(tmp_path):
  train_main(tmp_path, "--config.total_steps=4", "--config.checkpoint_every=2")
  data_dir = tmp_path / "checkpoints" / "4" / "params" / "ocdbt.process_0" / "d"
  biggest = max(data_dir.iterdir(), key=lambda p: p.stat().st_size)
  os.truncate(biggest, 100)
  before = {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*")}
  metrics_before = (tmp_path / "metrics.jsonl").read_text()

  result = run_main(tmp_path, "--config.total_steps=6")
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1
  line = last_line(result)
  assert line.startswith(f"error: checkpoint {tmp_path / 'checkpoints' / '4'} cannot be read (params: ")
  assert "damaged or incomplete; move it aside" in line
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*")} == before
  assert (tmp_path / "metrics.jsonl").read_text() == metrics_before

  shutil.move(tmp_path / "checkpoints" / "4", tmp_path / "damaged_4")  # as the message says
  resumed, _ = train_main(tmp_path, "--config.total_steps=6")
  assert "/checkpoints/2 " in resumed


def test_a_second_run_on_the_same_workdir_refuses_naming_the_first(tmp_path):
  first = start_main(tmp_path, "--config.total_steps=100000", "--config.log_every=1", "--config.eval_every=0")
  try:
    wait_for(lambda: (tmp_path / "metrics.jsonl").is_file() and len(read_metrics(tmp_path)) >= 2, first)
    second = run_main(tmp_path, "--config.total_steps=100000")
    assert second.returncode == 2
    assert last_line(second) == (f"error: workdir {tmp_path} is in use by another training run (pid {first.pid} on "
                                 f"{os.uname().nodename} since " + last_line(second).split(" since ")[1])
    assert first.poll() is None  # the first run goes on
    steps = len(read_metrics(tmp_path))
    time.sleep(1.0)
    assert len(read_metrics(tmp_path)) > steps
  finally:
    first.kill()
    first.wait()
  # the lock goes with its process, even after SIGKILL: the next run starts
  train_main(tmp_path, "--config.total_steps=2")


def test_a_workdir_that_cannot_rename_directories_is_refused_before_training_naming_the_mount_option(tmp_path,
                                                                                                   monkeypatch):
  """gcsfuse without --rename-dir-limit refuses to rename a directory holding objects (flat buckets), which
  is how orbax completes every checkpoint: here os.rename fails so for directories, as it would there."""
  rename = os.rename

  def no_directory_renames(source, target):
    if os.path.isdir(source):
      raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP), source)
    rename(source, target)

  monkeypatch.setattr(os, "rename", no_directory_renames)
  with pytest.raises(UserError) as refused:
    train_main(tmp_path, "--config.total_steps=2")
  assert str(refused.value) == (f"workdir {tmp_path} cannot rename directories (Operation not supported), and every "
                                "checkpoint is a directory renamed when complete: on gcsfuse mount the bucket with "
                                "--rename-dir-limit=200000 (mountOptions rename-dir-limit=200000 on GKE), or use "
                                "--workdir=gs://BUCKET/PATH")
  assert sorted(os.listdir(tmp_path)) == [".lock"]  # nothing trained, no probe left behind
  monkeypatch.setattr(os, "rename", rename)
  train_main(tmp_path, "--config.total_steps=2")  # the probe passes where renames work, and leaves nothing
  assert not any(name.startswith(".rename-probe") for name in os.listdir(tmp_path))
  assert saved_steps(tmp_path) == [2]


def test_a_read_only_workdir_is_refused_in_one_line(tmp_path, monkeypatch):
  """As on a gcsfuse mount made read-only for data: creating anything in the workdir fails with EROFS."""
  makedirs = os.makedirs

  def read_only(path, *args, exist_ok=False, **kwargs):
    if exist_ok and os.path.isdir(path):  # as mkdir answers on a read-only mount: EEXIST
      return
    if str(path).startswith(str(tmp_path)):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    makedirs(path, *args, exist_ok=exist_ok, **kwargs)

  monkeypatch.setattr(os, "makedirs", read_only)
  from xvit_jax import workdir  # pylint: disable=import-outside-toplevel
  with pytest.raises(UserError, match=f"^workdir {tmp_path} cannot be written \\(Read-only file system\\)$"):
    with workdir.exclusive(str(tmp_path)):
      pass
  with pytest.raises(UserError, match=f"^workdir {tmp_path}/run cannot be created \\(Read-only file system\\)$"):
    with workdir.exclusive(str(tmp_path / "run")):
      pass


def test_a_resumed_run_writes_its_metrics_after_a_line_cut_short_by_a_kill(tmp_path):
  from xvit_jax import metric_writer  # pylint: disable=import-outside-toplevel
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "train/loss": 1.5}\n{"step": 3, "train/lo')
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write(3, {"train/loss": 1.25})
  writer.close()
  assert metric_writer.read_records(str(tmp_path)) == [{"step": 2, "train/loss": 1.5}, {"step": 3, "train/loss": 1.25}]
  writer = metric_writer.MetricWriter(str(tmp_path))  # a file that ends a line: nothing added
  writer.close()
  assert (tmp_path / "metrics.jsonl").read_text().endswith('"train/loss": 1.25}\n')
