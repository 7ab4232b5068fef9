"""`python -m xvit_jax.main` end to end: metrics, TensorBoard, checkpoints, resume, evaluation, init_from,
the final model as the result and the paper recipes' refusal to start from random weights unasked through
train_and_evaluate (what the command calls, here in this process), and as a process: several devices,
grain worker processes (and how many by default) and the one-line error."""

import os

import pytest

from conftest import load_config, read_metrics, run_main, train_main
from xvit_jax import config_lib
from xvit_jax.data import pipeline
from xvit_jax.errors import UserError

RECIPES = ["configs/k400.py", "configs/k600.py", "configs/ssv2.py", "configs/epic100.py"]


def test_train_log_evaluate_checkpoint_and_resume(tmp_path):
  first, _ = train_main(tmp_path, "--config.total_steps=4")
  assert "step 4/4 | loss" in first and "clips/s | ETA" in first
  assert first.count("eval at step 4: top1") == 1  # the final model's evaluation is that of step 4, not another
  records = read_metrics(tmp_path)
  assert [r["step"] for r in records] == [2, 4]
  for r in records:
    assert {"step", "train/loss", "train/accuracy", "eval/top1", "eval/top5"} <= set(r)
    assert 0 <= r["eval/top1"] <= r["eval/top5"] <= 1
  final = records[-1]
  assert not any(name.startswith("final/") for name in records[0])
  assert (final["final/top1"], final["final/top5"]) == (final["eval/top1"], final["eval/top5"])
  assert final["final/videos"] == 10  # the whole eval split (data.eval_size)
  assert first.strip().splitlines()[-1] == (  # the run's result, its last line
      f"final model at step 4: top1 {final['final/top1']:.4f} | top5 {final['final/top5']:.4f} | "
      f"loss {final['final/loss']:.4f} | videos 10 | skipped 0")
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
  # on the CPU, with no peak FLOP/s set: the time shares but no MFU; no profile unless asked
  assert "MFU not logged: no peak FLOP/s known for device kind 'cpu' (set --config.peak_flops_per_device)" in first
  assert "train/mfu" not in records[1] and records[1]["train/step_time_fraction"] > 0
  assert not (tmp_path / "profile").exists()

  resumed, _ = train_main(tmp_path, "--config.total_steps=6")
  assert "steps 4..6" in resumed
  assert [r["step"] for r in read_metrics(tmp_path)] == [2, 4, 6]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]


@pytest.mark.slow  # 25 s; test_sharding trains on 8 devices over 5 meshes
def test_data_parallel_over_four_devices(tmp_path):
  result = run_main(tmp_path, "--config.total_steps=2", devices=4)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "4 device(s)" in result.stdout and "step 2/2 | loss" in result.stdout
  assert [r["step"] for r in read_metrics(tmp_path)] == [2]
  bad = run_main(tmp_path / "bad", "--config.total_steps=2", "--config.batch_size=6", devices=4)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      "error: config.batch_size=6 is not allowed: a multiple of 4: the batch is split over mesh data=4 x fsdp=1 = 4 "
      "devices and grad_accum_steps=1 micro-batches")


def test_evaluate_mode_init_from_and_a_checkpoint_of_another_config(tmp_path):
  train_main(tmp_path / "a", "--config.total_steps=2")
  evaluated, results = train_main(tmp_path / "a", mode="evaluate")
  assert "evaluation: eval/top1" in evaluated and 0 <= results["eval/top1"] <= results["eval/top5"] <= 1
  assert read_metrics(tmp_path / "a")[-1] == {"step": 2, **results}
  assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["2"]

  finetuned, _ = train_main(tmp_path / "b", "--config.total_steps=2", f"--config.init_from={tmp_path / 'a'}")
  assert f"initialised from {tmp_path / 'a'}" in finetuned and "steps 0..2" in finetuned

  with pytest.raises(UserError) as error:
    train_main(tmp_path / "a", "--config.total_steps=4", "--config.model.mlp_dim=96")
  assert str(error.value).startswith(
      f"checkpoint {tmp_path / 'a' / 'checkpoints' / '2'} is from another model config: "
      "parameter blocks/0/mlp/fc1/bias has shape (64,), the config needs (96,)"), str(error.value)
  assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["2"]


def test_grain_worker_processes_give_the_same_training(tmp_path):
  """The same batches, step by step, whether the main process or grain's workers make the clips (as
  processes: grain's workers read the command's parsed flags)."""
  losses = []
  for workers in (0, 2):
    result = run_main(tmp_path / str(workers), "--config.total_steps=4", "--config.log_every=1",
                      "--config.eval_every=0", f"--config.data.workers={workers}")
    assert result.returncode == 0, result.stderr[-2000:]
    losses.append([r["train/loss"] for r in read_metrics(tmp_path / str(workers)) if "train/loss" in r])
  assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_a_paper_recipe_asks_for_its_initialisation_before_any_work(tmp_path):
  for path in RECIPES:
    assert load_config(path).requires_init and not load_config(path, "smoke").requires_init
  with pytest.raises(UserError) as error:
    train_main(tmp_path / "k400", config=load_config("configs/k400.py", "8"))
  assert str(error.value) == (
      "config.init_from is not set and the workdir has no checkpoint to resume: this recipe starts from pretrained "
      "weights; pass --config.init_from=ViT-B_16.npz (ImageNet-21k, as the paper) or --config.init_from=scratch "
      "(random weights, on purpose)")
  assert not (tmp_path / "k400").exists()  # nothing written
  with pytest.raises(UserError, match="^no checkpoint in"):  # evaluating does not ask
    train_main(tmp_path / "k400", mode="evaluate", config=load_config("configs/k400.py", "8"))


def test_scratch_auto_workers_and_the_final_model_without_periodic_evaluation(tmp_path, monkeypatch):
  """init_from=scratch starts a recipe that asks from random weights; with eval_every=0 the final model is
  still evaluated and is the result; data.workers=-1 is printed as chosen; the finished run resumes (a
  checkpoint exists: nothing asked) with nothing left to train."""
  monkeypatch.setattr(pipeline, "usable_cpus", lambda: 1)  # -1 -> 0 workers: no worker processes in this one
  stdout, _ = train_main(tmp_path, "--config.total_steps=3", "--config.eval_every=0", "--config.requires_init=True",
                         "--config.init_from=scratch", "--config.data.workers=-1")
  assert "starting from random weights (config.init_from=scratch, seed 0)" in stdout
  assert ("data workers: 0 (automatic, config.data.workers=-1: 1 usable CPU(s) shared by 1 JAX process(es) on this "
          "host, less one for the main process)") in stdout
  assert [r["step"] for r in read_metrics(tmp_path)] == [2, 3]
  final = read_metrics(tmp_path)[-1]
  assert stdout.strip().splitlines()[-1].startswith(f"final model at step 3: top1 {final['final/top1']:.4f} | top5 ")
  again, _ = train_main(tmp_path, "--config.total_steps=3", "--config.requires_init=True")
  assert again.strip().splitlines()[-1] == (
      f"nothing left to train: the model in {tmp_path / 'checkpoints'} is at step 3 (total_steps=3); "
      "--mode=evaluate evaluates it")


def test_usable_cpus_from_the_affinity_and_the_cgroup_quota(tmp_path, monkeypatch):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
  assert pipeline.usable_cpus(str(tmp_path)) == 16  # no cgroup files
  (tmp_path / "cpu").mkdir()
  for quota, cpus in (("-1", 16), ("800000", 8), ("150000", 1), ("50000", 1), ("3200000", 16)):
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert pipeline.usable_cpus(str(tmp_path)) == cpus, quota
  for limit, cpus in (("max 100000", 16), ("250000 100000", 2), ("400000 50000", 8)):
    (tmp_path / "cpu.max").write_text(limit + "\n")  # cgroup v2, which wins
    assert pipeline.usable_cpus(str(tmp_path)) == cpus, limit
  assert [pipeline.auto_workers(16), pipeline.auto_workers(16, 4), pipeline.auto_workers(2, 2),
          pipeline.auto_workers(1)] == [15, 3, 0, 0]

  assert config_lib.base_config().data.workers == -1 and load_config("configs/demo.py").data.workers == 0
  config = load_config("configs/demo.py")
  config.data.workers = -2
  with pytest.raises(UserError) as error:
    config_lib.check(config, num_devices=1)
  assert str(error.value) == ("config.data.workers=-2 is not allowed: -1 (automatic: from the CPUs this process "
                              "may use), 0 (the main process reads) or a number of grain worker processes")


def test_the_log_shows_the_share_of_time_spent_waiting_for_input(tmp_path, monkeypatch):
  """Clips made 100 ms each (a batch of 8: 0.8 s) for a step of milliseconds: the loop waits for input
  most of the time, and each log line after the first (which holds compilation) and metrics.jsonl say so."""
  import time  # pylint: disable=import-outside-toplevel
  from xvit_jax.data import sources  # pylint: disable=import-outside-toplevel
  real = sources.TrainClip

  class SlowClip:
    def __init__(self, config):
      self.clip = real(config)

    def __call__(self, record, rng):
      time.sleep(0.1)  # 30 ms left the share under 0.7 when other tests loaded the machine
      return self.clip(record, rng)

  monkeypatch.setattr(sources, "TrainClip", SlowClip)
  stdout, _ = train_main(tmp_path, "--config.total_steps=6", "--config.log_every=2", "--config.eval_every=0")
  logged = [r for r in read_metrics(tmp_path) if "train/loss" in r]
  assert [r["step"] for r in logged] == [2, 4, 6] and "train/input_wait_fraction" not in logged[0]
  assert all(0.7 < r["train/input_wait_fraction"] <= 1 for r in logged[1:]), logged
  lines = [line for line in stdout.splitlines() if line.startswith("step ")]
  assert "input wait" not in lines[0]
  assert all(f"| input wait {100 * r['train/input_wait_fraction']:.0f}%" in line for r, line in zip(logged[1:], lines[1:]))
