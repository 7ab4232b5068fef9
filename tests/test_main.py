"""`python -m xvit_jax.main` end to end, as a user runs it: metrics, TensorBoard, checkpoints, resume,
several devices."""

import json
import os
import subprocess
import sys

from conftest import REPO

TINY = ["--config.model.hidden_size=32", "--config.model.mlp_dim=64", "--config.model.num_layers=2",
        "--config.model.image_size=16", "--config.model.num_frames=4", "--config.data.object_size=4",
        "--config.data.eval_size=10", "--config.batch_size=8", "--config.log_every=2", "--config.eval_every=2",
        "--config.optimizer.warmup_steps=1"]


def run_main(workdir, *overrides, devices=1):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "xvit_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
                         *TINY, *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def read_metrics(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def test_train_log_evaluate_checkpoint_and_resume(tmp_path):
  first = run_main(tmp_path, "--config.total_steps=4")
  assert first.returncode == 0, first.stderr[-2000:]
  assert "step 4/4 | loss" in first.stdout and "clips/s | ETA" in first.stdout
  assert "eval at step 4: top1" in first.stdout
  records = read_metrics(tmp_path)
  assert [r["step"] for r in records] == [2, 4]
  for r in records:
    assert {"step", "train/loss", "train/accuracy", "eval/top1", "eval/top5"} <= set(r)
    assert 0 <= r["eval/top1"] <= r["eval/top5"] <= 1
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]

  resumed = run_main(tmp_path, "--config.total_steps=6")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "steps 4..6" in resumed.stdout
  assert [r["step"] for r in read_metrics(tmp_path)] == [2, 4, 6]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]


def test_data_parallel_over_four_devices(tmp_path):
  result = run_main(tmp_path, "--config.total_steps=2", devices=4)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "4 device(s)" in result.stdout
  bad = run_main(tmp_path / "bad", "--config.total_steps=2", "--config.batch_size=6", devices=4)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      "error: config.batch_size=6 is not allowed: a multiple of 4: the batch is split over mesh data=4 x fsdp=1 = 4 "
      "devices and grad_accum_steps=1 micro-batches")


def test_evaluate_mode_init_from_and_a_checkpoint_of_another_config(tmp_path):
  assert run_main(tmp_path / "a", "--config.total_steps=2").returncode == 0
  evaluated = run_main(tmp_path / "a", "--mode=evaluate")
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert "evaluation: eval/top1" in evaluated.stdout
  assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["2"]

  finetuned = run_main(tmp_path / "b", "--config.total_steps=2", f"--config.init_from={tmp_path / 'a'}")
  assert finetuned.returncode == 0, finetuned.stderr[-2000:]
  assert f"initialised from {tmp_path / 'a'}" in finetuned.stdout and "steps 0..2" in finetuned.stdout

  other = run_main(tmp_path / "a", "--config.total_steps=4", "--config.model.mlp_dim=96")
  assert other.returncode == 2
  last = other.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: checkpoint {tmp_path / 'a' / 'checkpoints' / '2'} is from another model config: "
                         "parameter blocks/0/mlp/fc1/bias has shape (64,), the config needs (96,)"), last
  assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["2"]


def test_grain_worker_processes_give_the_same_training(tmp_path):
  losses = []
  for workers in (0, 2):
    result = run_main(tmp_path / str(workers), "--config.total_steps=2", "--config.eval_every=0",
                      f"--config.data.workers={workers}")
    assert result.returncode == 0, result.stderr[-2000:]
    losses.append([r["train/loss"] for r in read_metrics(tmp_path / str(workers))])
  assert losses[0] == losses[1]
