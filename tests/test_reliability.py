"""Faults a long run meets, each as it happens, through `python -m xvit_jax.main`: NaN/Inf steps, a
checkpoint write that fails, a damaged checkpoint, a second run on the same workdir. Each ends in one
line naming the culprit, and what was saved before stays intact and restorable."""

import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np

from conftest import REPO
from test_main import TINY, read_metrics, run_main
from test_resume import saved_steps, start_main, wait_for
from test_sharding import _final_params

DIVERGE = ["--config.optimizer.learning_rate=1e5", "--config.optimizer.warmup_steps=0", "--config.eval_every=0"]


def last_line(result):
  lines = result.stderr.strip().splitlines()
  return lines[-1] if lines else ""


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  good = run_main(tmp_path, "--config.total_steps=2", "--config.checkpoint_every=2")
  assert good.returncode == 0, good.stderr[-2000:]
  kept = _final_params(tmp_path)

  diverged = run_main(tmp_path, "--config.total_steps=10", *DIVERGE)
  assert diverged.returncode == 2
  line = last_line(diverged)
  assert line.startswith("error: the loss or gradients became NaN/Inf at step ") and "newest checkpoint: step 2" in line
  assert len(diverged.stderr.strip().splitlines()) == 1
  assert saved_steps(tmp_path) == [2]
  for a, b in zip(jax.tree.leaves(_final_params(tmp_path)), jax.tree.leaves(kept)):
    assert np.array_equal(a, b)


def test_nonfinite_skip_counts_the_steps_and_never_applies_them(tmp_path):
  result = run_main(tmp_path, "--config.total_steps=6", "--config.log_every=3", "--config.nonfinite=skip", *DIVERGE)
  assert result.returncode == 0, result.stderr[-2000:]
  records = read_metrics(tmp_path)
  assert records[-1]["train/nonfinite_steps"] >= 1
  assert "non-finite steps skipped" in result.stdout
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(_final_params(tmp_path)))


def test_a_failed_checkpoint_write_stops_the_run_and_the_previous_checkpoint_survives(tmp_path):
  """A write that fails mid-checkpoint: files over 40 KiB are refused (EFBIG), as a full disk refuses them."""
  first = run_main(tmp_path, "--config.total_steps=2", "--config.checkpoint_every=2")
  assert first.returncode == 0, first.stderr[-2000:]
  kept = _final_params(tmp_path)

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  limited = ["bash", "-c", 'ulimit -f 40 && exec "$@"', "bash"]  # 40 blocks of 1 KiB
  failed = subprocess.run([*limited, sys.executable, "-m", "xvit_jax.main", "--config=configs/demo.py",
                           f"--workdir={tmp_path}", *TINY, "--config.total_steps=4", "--config.checkpoint_every=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert failed.returncode == 2
  [line] = [l for l in failed.stderr.splitlines() if l.startswith("error: ")]  # orbax's own log comes before it
  assert line.startswith(f"error: writing a checkpoint in {tmp_path / 'checkpoints'} failed: ")
  assert "File too large" in line and "the newest complete checkpoint (step 2) is intact" in line
  assert saved_steps(tmp_path) == [2]  # the unfinished step is a temporary directory, never a step
  for a, b in zip(jax.tree.leaves(_final_params(tmp_path)), jax.tree.leaves(kept)):
    assert np.array_equal(a, b)

  resumed = run_main(tmp_path, "--config.total_steps=4")  # the same command, once the disk is fixed
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from" in resumed.stdout and "/checkpoints/2 " in resumed.stdout
  assert not [name for name in os.listdir(tmp_path / "checkpoints") if "tmp" in name]  # the leftover is cleaned up
  assert saved_steps(tmp_path)[-1] == 4


def test_a_damaged_checkpoint_is_named_and_nothing_is_written(tmp_path):
  assert run_main(tmp_path, "--config.total_steps=4", "--config.checkpoint_every=2").returncode == 0
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
  resumed = run_main(tmp_path, "--config.total_steps=6")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "/checkpoints/2 " in resumed.stdout


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
  again = run_main(tmp_path, "--config.total_steps=2")
  assert again.returncode == 0, again.stderr[-2000:]
