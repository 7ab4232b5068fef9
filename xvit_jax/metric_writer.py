"""Where metrics go: one JSON object per line in workdir/metrics.jsonl, TensorBoard event files in
workdir/tensorboard, and a progress line on stdout. Only process 0 writes."""

import json
import os

import jax
from tensorboardX import SummaryWriter


class MetricWriter:

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      self.jsonl = open(path, "a")
      if _ends_mid_line(path):  # a run killed mid-write: its cut-short line must not swallow our first record
        self.jsonl.write("\n")
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step, metrics):
    """metrics: {"train/loss": 0.7, "eval/top1": 0.9, ...} of Python floats."""
    if not self.active or not metrics:
      return
    self.jsonl.write(json.dumps({"step": int(step), **metrics}) + "\n")
    self.jsonl.flush()
    for name, value in metrics.items():
      self.tb.add_scalar(name, value, int(step))
    self.tb.flush()

  def print(self, line):
    if self.active:
      print(line, flush=True)

  def close(self):
    if self.active:
      self.jsonl.close()
      self.tb.close()


def _ends_mid_line(path):
  with open(path, "rb") as f:
    f.seek(0, os.SEEK_END)
    if not f.tell():
      return False
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b"\n"


def read_records(workdir):
  """The records of workdir/metrics.jsonl in order ([] without the file), a line cut short when a run was
  killed mid-write left out. A resumed run rewrites the steps after its checkpoint: later records of a step
  come after earlier ones."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and "step" in record:
        records.append(record)
  return records


def format_duration(seconds):
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
