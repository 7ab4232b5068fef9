"""Where a training run's wall time goes, and how much of the devices' peak its train steps use (MFU).

Dispatch is asynchronous: the loop queues step k and goes on to take batch k+1 while the devices run it,
so a clock around the step's call times its dispatch, not the step, and the loop may wait for input while
the devices are still busy. A thread (StepClock) waits on each step's outputs and notes when they are
ready, so the loop itself waits for the devices only where it already did (a log step's metrics,
evaluation, checkpoints). From those times `split` divides a log interval's wall time into parts that
do not overlap and sum to it:

  step        step k: from its dispatch (or step k-1 ready, if later) to its outputs ready
  input       the loop waiting for batch k after step k-1 was ready: the devices idle for want of clips
  eval, checkpoint, log   the loop's own work, timed after the steps before it were ready
  other       the rest: host work while the devices had no step (dispatching, the loop's bookkeeping,
              starting and writing a profile trace)

MFU divides the model FLOPs of the interval's steps (flops.train_flops_per_clip x the global batch: the
whole step, micro-batches included) by their step time and by the devices' peak (chips.peak_flops).
"""

import contextlib
import queue
import threading
import time

import jax

from xvit_jax import chips, flops

WORK = ("eval", "checkpoint", "log")  # the loop's own work, timed by Interval.timed
PARTS = ("step", "input", *WORK, "other")
NAMES = {"step": "train/step_time_fraction", "input": "train/input_wait_fraction",
         "eval": "train/eval_time_fraction", "checkpoint": "train/checkpoint_time_fraction",
         "log": "train/log_time_fraction", "other": "train/other_time_fraction"}


class StepClock:
  """The time (time.perf_counter) at which each dispatched train step's outputs became ready, noted by a
  thread that waits on them; `ready()` waits for the steps dispatched so far and hands over their times."""

  def __init__(self):
    self._outputs, self._times, self._dispatched = queue.SimpleQueue(), [], 0
    self._noted = threading.Condition()
    self._thread = threading.Thread(target=self._watch, name="step-clock", daemon=True)
    self._thread.start()

  def dispatched(self, outputs):
    """`outputs`: a step's results (its metrics: all outputs of one program are ready together)."""
    self._dispatched += 1
    self._outputs.put(outputs)

  def _watch(self):
    while (outputs := self._outputs.get()) is not None:
      try:
        jax.block_until_ready(outputs)
      except Exception:  # noqa: BLE001 - the loop meets the same error where it reads the outputs
        pass
      with self._noted:
        self._times.append(time.perf_counter())
        self._noted.notify_all()

  def ready(self):
    """Waits until every step dispatched so far is ready; their ready times since the last call, in order."""
    with self._noted:
      self._noted.wait_for(lambda: len(self._times) == self._dispatched)
      times, self._times, self._dispatched = self._times, [], 0
    return times

  def close(self):
    self._outputs.put(None)
    self._thread.join(timeout=60)


def split(start, end, steps, work):
  """{part: seconds} of the wall time start..end (PARTS). `steps`: (wait_start, dispatched, ready) of each
  step dispatched in it, in order, with wait_start <= dispatched <= ready; `work`: {"eval": seconds, ...}
  spent between steps, after the steps before were ready."""
  step = waited = 0.0
  previous = start  # the ready time of the step before (the last before `start` was ready by then)
  for wait_start, dispatched, ready in steps:
    waited += max(0.0, dispatched - max(wait_start, previous))
    step += max(0.0, ready - max(dispatched, previous))
    previous = ready
  seconds = {"step": step, "input": waited, **{kind: work.get(kind, 0.0) for kind in WORK}}
  seconds["other"] = max(0.0, (end - start) - sum(seconds.values()))
  return seconds


def mfu(flops_per_step, steps, step_seconds, devices, peak_per_device):
  """Model FLOPs of `steps` steps over their `step_seconds` in all, as a share of `devices` x the peak."""
  return flops_per_step * steps / (step_seconds * devices * peak_per_device)


class Interval:
  """The timings of one log interval: the steps' input waits and dispatches, the clock's ready times, and
  the loop's own work (`timed`). `close(end)` returns the interval's record and starts the next one."""

  def __init__(self, clock):
    self.clock, self.start = clock, None
    self.waits, self.ready_times, self.work = [], [], {}

  def add(self, wait_start, dispatched, outputs):
    self.waits.append((wait_start, dispatched))
    self.clock.dispatched(outputs)

  def wait_for_steps(self):
    """Waits until the steps dispatched so far are ready (a log step, evaluation and checkpoints wait for
    them anyway) and keeps their ready times."""
    self.ready_times += self.clock.ready()

  @contextlib.contextmanager
  def timed(self, kind):
    """Times the loop's own work of `kind` (WORK), once the steps before it are ready: its time is its own."""
    self.wait_for_steps()
    began = time.perf_counter()
    try:
      yield
    finally:
      self.work[kind] = self.work.get(kind, 0.0) + time.perf_counter() - began

  def close(self, end, flops_per_step=None, devices=1, peak_per_device=None):
    """The record of the interval that ends at `end` (its steps ready by then: wait_for_steps first): the
    shares of its wall time (NAMES), the mean step time and, with a peak, MFU; {} for the first interval,
    which has no start (it holds compilation). The next interval starts at `end`."""
    record = {}
    if self.start is not None and self.waits:
      steps = [(w, d, r) for (w, d), r in zip(self.waits, self.ready_times)]
      seconds = split(self.start, end, steps, self.work)
      wall = end - self.start
      record = {NAMES[part]: seconds[part] / wall for part in PARTS}
      record["train/step_seconds"] = seconds["step"] / len(steps)
      if flops_per_step and peak_per_device and seconds["step"] > 0:
        record["train/mfu"] = mfu(flops_per_step, len(steps), seconds["step"], devices, peak_per_device)
    self.start, self.waits, self.ready_times, self.work = end, [], [], {}
    return record


def model_flops(config, devices):
  """(model FLOPs of one train step, peak FLOP/s per device, a line saying so), or (None, None, a line
  saying why MFU is not logged): the peak is config.peak_flops_per_device if set, else chips.py's for the
  devices' kind; none on CPU or a kind not in the table."""
  override = config.get("peak_flops_per_device")
  kind = devices[0].device_kind
  peak = chips.peak_flops(devices, override)
  if not peak:
    return None, None, (f"MFU not logged: no peak FLOP/s known for device kind {kind!r} "
                        f"(set --config.peak_flops_per_device)")
  per_step = flops.train_flops_per_clip(config.model, dtype=config.dtype) * config.batch_size
  source = "config.peak_flops_per_device" if override else f"xvit_jax/chips.py, {kind}"
  return per_step, peak, (f"MFU against {peak / 1e12:.4g} TFLOP/s per device ({source}) x {len(devices)}: "
                          f"{per_step / 1e12:.4g} TFLOP of model FLOPs per step (3 x the forward of "
                          f"{config.batch_size} clips)")
