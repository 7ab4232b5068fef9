"""`config.profile_steps=START:COUNT`: a jax.profiler trace of train steps START..START+COUNT-1.

Process 0 writes it into WORKDIR/profile/plugins/profile/<time>/: <host>.xplane.pb for XProf, TensorBoard's
profile plugin (`xprof --logdir WORKDIR/profile`), and perfetto_trace.json.gz for ui.perfetto.dev;
each step of the run is a `train` step annotation (step_num) in it. The other processes of a multi-host
run take no trace (their devices run the same program). The trace starts after the step before START is
ready, so it holds only its steps, and stops once the last of them is ready.
"""

import os
import re

import jax

from xvit_jax import fields

FIELD = "profile_steps"


def steps(config):
  """(START, COUNT) of config.profile_steps, None when it is "" (or the config has no such field); one-line
  UserError for anything else."""
  value = config.get(FIELD)
  allowed = (f'START:COUNT, two positive integers (a trace of steps START..START+COUNT-1, within '
             f'1..total_steps={config.total_steps}), or "" for none')
  if value is None or value == "":
    return None
  if not isinstance(value, str):
    fields.fail(FIELD, value, allowed)
  match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
  if not match:
    fields.fail(FIELD, value, allowed)
  start, count = int(match[1]), int(match[2])
  if start < 1 or count < 1 or start + count - 1 > config.total_steps:
    fields.fail(FIELD, value, allowed)
  return start, count


class Profile:
  """The trace of config.profile_steps in a run that trains steps first_step+1 .. (see the module)."""

  def __init__(self, config, workdir, first_step, writer):
    self.steps, self.tracing = steps(config), False
    self.directory = os.path.join(workdir, "profile")
    if self.steps and first_step + 1 > self.steps[0]:
      writer.print(f"config.profile_steps={config.profile_steps}: this run starts at step {first_step + 1}, past step "
                   f"{self.steps[0]}: no trace is taken (a fresh workdir, or a later START, takes one)")
      self.steps = None
    elif self.steps:
      start, count = self.steps
      writer.print(f"profiling steps {start}..{start + count - 1} into {self.directory} "
                   f"(xprof or tensorboard --logdir {self.directory}; perfetto_trace.json.gz for ui.perfetto.dev)")
    if jax.process_index() != 0:  # process 0 alone takes the trace
      self.steps = None

  def before(self, step, wait_for_steps):
    """At step START, before its batch is taken: waits for the steps before (`wait_for_steps()`), starts."""
    if self.steps and step == self.steps[0]:
      wait_for_steps()
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.tracing = True

  def after(self, step, outputs):
    """At step START+COUNT-1, once dispatched: waits for its `outputs`, writes the trace."""
    if self.tracing and step == sum(self.steps) - 1:
      jax.block_until_ready(outputs)
      self.close()

  def close(self):
    """Stops a trace still running (a run stopped inside the steps): what it holds is written."""
    if self.tracing:
      self.tracing = False
      jax.profiler.stop_trace()
