"""Where metrics go: one JSON object per line in workdir/metrics.jsonl, TensorBoard event files in
workdir/tensorboard, and a progress line on stdout. Only process 0 writes.

In a gs:// workdir (Cloud Storage objects cannot be appended to) metrics.jsonl is rewritten whole at
each write, from a copy kept in memory (a few hundred bytes a record), and tensorboardX uploads its event
file whole at each flush: a killed run leaves what its last write uploaded, as a local run leaves what it
flushed."""

import json
import os

import jax
from etils import epath
from tensorboardX import SummaryWriter

from xvit_jax import workdir as workdir_lib


class MetricWriter:

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    if self.active:
      path = os.path.join(workdir, "metrics.jsonl")
      if workdir_lib.is_remote(workdir):
        self.jsonl = _RewrittenObject(path)
      else:
        os.makedirs(workdir, exist_ok=True)
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


class _RewrittenObject:
  """metrics.jsonl in Cloud Storage, as the file methods MetricWriter uses: `write` appends to a copy in
  memory (the object's text when the run started, a cut-short last line ended), `flush` uploads it whole."""

  def __init__(self, path):
    self.path = epath.Path(path)
    self.text = self.path.read_text() if self.path.exists() else ""
    if self.text and not self.text.endswith("\n"):
      self.text += "\n"

  def write(self, text):
    self.text += text

  def flush(self):
    self.path.write_text(self.text)

  def close(self):
    self.flush()


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
  path = epath.Path(os.path.join(workdir, "metrics.jsonl"))
  if not path.is_file():
    return []
  records = []
  with path.open(encoding="utf-8") as f:
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
