"""Preemption and resume as they happen: a run killed with SIGKILL at any moment, or stopped with
SIGTERM, and restarted with the same command ends bitwise where an uninterrupted run ends, having seen
the same data; checkpoints keep the newest N and the best; an unfinished checkpoint is never used."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np

from conftest import REPO
from test_main import TINY, read_metrics, run_main
from test_sharding import _final_params
from xvit_jax import checkpoints

RUN = ["--config.total_steps=24", "--config.checkpoint_every=3", "--config.log_every=1", "--config.eval_every=15",
       "--config.checkpoint_keep=2", "--config.data.eval_size=400"]


def start_main(workdir, *overrides):
  """The command as a running process; its stdout lines are collected as they come in `process.lines`."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  process = subprocess.Popen([sys.executable, "-m", "xvit_jax.main", "--config=configs/demo.py",
                              f"--workdir={workdir}", *TINY, *overrides], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
  process.lines = []
  process.reader = threading.Thread(target=lambda: process.lines.extend(iter(process.stdout.readline, "")), daemon=True)
  process.reader.start()
  return process


def wait_for(predicate, process, timeout=120):
  deadline = time.time() + timeout
  while not predicate():
    assert process.poll() is None, "the run ended before it could be interrupted"
    assert time.time() < deadline, "timed out"
    time.sleep(0.005)


def saved_steps(workdir):
  path = workdir / "checkpoints"
  return sorted(int(name) for name in os.listdir(path) if name.isdigit()) if path.is_dir() else []


def train_losses(workdir):
  """{step: train loss} as the last run wrote it (a resumed run rewrites the steps after its checkpoint)."""
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.array_equal(x, y), "parameters differ from the uninterrupted run's"


def test_sigkill_at_any_moment_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
  reference = run_main(tmp_path / "ref", *RUN)
  assert reference.returncode == 0, reference.stderr[-2000:]
  expected_params, expected_losses = _final_params(tmp_path / "ref"), train_losses(tmp_path / "ref")

  work = tmp_path / "killed"
  # first kill: the moment the first checkpoint's directory appears (its write, or the next one's, in flight)
  run = start_main(work, *RUN)
  wait_for(lambda: (work / "checkpoints").is_dir() and os.listdir(work / "checkpoints"), run)
  run.kill()
  run.wait()
  # second kill: once step 12 is safely saved, mid-training
  run = start_main(work, *RUN)
  wait_for(lambda: any(step >= 12 for step in saved_steps(work)), run)
  run.kill()
  run.wait()
  # third kill: during the evaluation at step 15 (its progress line is out, its eval line is not)
  run = start_main(work, *RUN)
  wait_for(lambda: any(line.startswith("step 15/24") for line in run.lines), run)
  run.kill()
  run.wait()
  assert not any(line.startswith("eval at step 15") for line in run.lines), "killed after the evaluation"
  assert saved_steps(work)[-1] < 24, "killed too late to test anything"

  resumed = run_main(work, *RUN)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from" in resumed.stdout and "data stream at the saved position" in resumed.stdout
  assert_same_params(_final_params(work), expected_params)
  assert train_losses(work) == expected_losses  # the same batches, step by step


def test_sigterm_saves_exits_143_and_the_same_command_resumes(tmp_path):
  reference = run_main(tmp_path / "ref", *RUN)
  expected = _final_params(tmp_path / "ref")

  work = tmp_path / "preempted"
  run = start_main(work, *RUN)
  wait_for(lambda: (work / "metrics.jsonl").is_file() and len(read_metrics(work)) >= 5, run)
  run.send_signal(signal.SIGTERM)
  run.wait(timeout=120)
  run.reader.join(timeout=10)
  stdout = "".join(run.lines)
  assert run.returncode == 143
  stopped = int(stdout.split("preempted at step ")[1].split(":")[0])
  assert 5 <= stopped < 24 and stopped in saved_steps(work)
  assert "run the same command to resume" in stdout

  resumed = run_main(work, *RUN)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"steps {stopped}..24" in resumed.stdout
  assert_same_params(_final_params(work), expected)
  assert reference.returncode == 0


def test_keeps_the_newest_and_the_best_and_ignores_an_unfinished_checkpoint(tmp_path):
  first = run_main(tmp_path, "--config.total_steps=8", "--config.checkpoint_every=2", "--config.eval_every=2",
                   "--config.checkpoint_keep=2", "--config.optimizer.learning_rate=0.3")
  assert first.returncode == 0, first.stderr[-2000:]
  top1 = {r["step"]: r["eval/top1"] for r in read_metrics(tmp_path) if "eval/top1" in r}
  best = max(sorted(top1), key=lambda step: top1[step])  # the earliest of the best
  best = max(step for step in top1 if top1[step] == top1[best])  # ties: the newest of them is kept
  assert saved_steps(tmp_path) == sorted({6, 8, best})
  assert f"best eval/top1 {top1[best]:.4f} at step {best}" in first.stdout

  # a half-written step (what a kill during a write leaves: orbax's temporary directory) is not picked up
  partial = tmp_path / "checkpoints" / "10.orbax-checkpoint-tmp-1"
  shutil.copytree(tmp_path / "checkpoints" / "8", partial)
  os.remove(partial / "_CHECKPOINT_METADATA")
  mngr = checkpoints.manager(str(tmp_path), create=False)
  assert mngr.latest_step() == 8
  mngr.close()
  resumed = run_main(tmp_path, "--config.total_steps=10", "--config.checkpoint_every=2", "--config.eval_every=2",
                     "--config.checkpoint_keep=2", "--config.optimizer.learning_rate=0.3")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "steps 8..10" in resumed.stdout
  assert 10 in saved_steps(tmp_path)
