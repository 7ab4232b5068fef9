"""MFU and where a run's wall time goes (xvit_jax/goodput.py), and the profiler switch (profiling.py): the
split of a log interval by the steps' ready times, the records and progress lines of a real run, a real
trace of the chosen steps (none on a run resumed past them), and the one-line errors of bad values."""

import glob
import gzip
import json
import os
import time

import jax
import jax.numpy as jnp
import pytest

from conftest import last_line, main_config, read_metrics, run_main, train_main
from xvit_jax import flops, goodput, profiling


def test_the_split_counts_the_devices_time_not_the_hosts_waits():
  """Device-bound: after an evaluation (1 s) the host dispatches three 1-second steps at once, waiting
  0.05-0.1 s for each batch; only the first wait leaves the devices idle. A host clock would have
  counted 0.25 s of input wait and 0.75 s of steps."""
  steps = [(1.0, 1.05, 2.05), (1.05, 1.15, 3.05), (1.15, 1.25, 4.05)]  # (wait start, dispatched, ready)
  seconds = goodput.split(0.0, 4.1, steps, {"eval": 1.0})
  assert seconds == pytest.approx({"step": 3.0, "input": 0.05, "eval": 1.0, "checkpoint": 0.0, "log": 0.0,
                                   "other": 0.05})
  # input-bound: 10 ms steps, half a second for each batch; the devices wait for the batch after step 1
  steps = [(0.0, 0.5, 0.51), (0.5, 1.0, 1.01)]
  seconds = goodput.split(0.0, 1.02, steps, {})
  assert seconds == pytest.approx({"step": 0.02, "input": 0.99, "eval": 0.0, "checkpoint": 0.0, "log": 0.0,
                                   "other": 0.01})
  assert goodput.mfu(2e12, steps=10, step_seconds=4.0, devices=8, peak_per_device=1e12) == pytest.approx(0.625)


def test_the_step_clock_notes_each_step_ready_without_the_loop_waiting():
  clock = goodput.StepClock()
  step = jax.jit(lambda x: jnp.tanh(x @ x))
  x, outputs, before = jnp.ones((256, 256)), [], time.perf_counter()
  for _ in range(3):
    x = step(x)
    outputs.append(x)
    clock.dispatched(x)
  times = clock.ready()
  assert len(times) == 3 and before <= times[0] <= times[1] <= times[2] <= time.perf_counter()
  assert all(o.is_ready() for o in outputs)
  assert clock.ready() == []  # each time is handed over once
  clock.close()
  assert not clock._thread.is_alive()  # pylint: disable=protected-access


SHARES = list(goodput.NAMES.values())


def trace_steps(workdir):
  """The step numbers of the `train` step annotations in each trace under workdir/profile, per trace."""
  traces = sorted(glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "perfetto_trace.json.gz")))
  steps = []
  for path in traces:
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
    steps.append(sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train"))
  return steps


def test_mfu_time_shares_and_a_trace_of_the_chosen_steps(tmp_path):
  """With a peak set, every log line after the first carries MFU = model FLOPs of a step / its time /
  (devices x peak); the shares of each interval's wall time sum to 1, evaluation and checkpoint in the
  interval after them; steps 3 and 4, and only they, are in the trace. Resumed past step 3: no trace."""
  args = ["--config.total_steps=6", "--config.log_every=2", "--config.eval_every=4", "--config.checkpoint_every=4",
          "--config.peak_flops_per_device=2e11", "--config.profile_steps=3:2"]
  stdout, _ = train_main(tmp_path, *args)
  config = main_config(*args)
  per_step = flops.train_flops_per_clip(config.model, dtype=config.dtype) * config.batch_size
  assert f"MFU against 0.2 TFLOP/s per device (config.peak_flops_per_device) x 1: {per_step / 1e12:.4g} TFLOP" in stdout
  assert f"profiling steps 3..4 into {tmp_path}/profile" in stdout
  logged = [r for r in read_metrics(tmp_path) if "train/loss" in r]
  assert [r["step"] for r in logged] == [2, 4, 6]
  assert not set(SHARES + ["train/mfu", "train/step_seconds"]) & set(logged[0])  # the interval of compilation
  for r in logged[1:]:
    assert all(0 <= r[name] <= 1 for name in SHARES) and sum(r[name] for name in SHARES) == pytest.approx(1)
    assert r["train/step_time_fraction"] > 0
    assert r["train/mfu"] == pytest.approx(per_step / r["train/step_seconds"] / 2e11)
  after_eval = logged[2]  # steps 5..6, after the evaluation and the checkpoint of step 4
  assert after_eval["train/eval_time_fraction"] > 0 and after_eval["train/checkpoint_time_fraction"] > 0
  assert logged[1]["train/eval_time_fraction"] == logged[1]["train/checkpoint_time_fraction"] == 0
  lines = [line for line in stdout.splitlines() if line.startswith("step ")]
  assert "MFU" not in lines[0] and "step time" not in lines[0]
  for r, line in zip(logged[1:], lines[1:]):
    assert line.endswith(f"| step time {100 * r['train/step_time_fraction']:.0f}% | MFU {100 * r['train/mfu']:.1f}%")
  assert trace_steps(tmp_path) == [[3, 4]]
  xplane = glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(xplane) == 1 and os.path.getsize(xplane[0]) > 0

  resumed, _ = train_main(tmp_path, "--config.total_steps=7", *args[1:])
  assert "config.profile_steps=3:2: this run starts at step 7, past step 3: no trace is taken" in resumed
  assert trace_steps(tmp_path) == [[3, 4]]


def test_only_process_0_takes_a_trace(tmp_path, monkeypatch):
  """The other processes of a multi-host run neither trace nor wait for their steps to take one."""
  printed, waits = [], []
  writer = type("Writer", (), {"print": lambda self, line: printed.append(line)})()
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  profile = profiling.Profile(main_config("--config.profile_steps=1:1"), str(tmp_path), 0, writer)
  profile.before(1, lambda: waits.append(1))
  profile.after(1, jnp.ones(()))
  profile.close()
  assert waits == [] and not os.listdir(tmp_path)


def test_bad_peak_or_profile_steps_stop_the_run_in_one_line(tmp_path):
  for arg, expected in [
      ("--config.peak_flops_per_device=fast",
       "error: flag --config.peak_flops_per_device=fast: could not convert string to float: 'fast'"),
      ("--config.profile_steps=3",
       "error: config.profile_steps='3' is not allowed: START:COUNT, two positive integers (a trace of steps "
       'START..START+COUNT-1, within 1..total_steps=4), or "" for none')]:
    result = run_main(tmp_path, "--config.total_steps=4", arg)
    assert result.returncode == 2 and last_line(result) == expected, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not os.listdir(tmp_path)
