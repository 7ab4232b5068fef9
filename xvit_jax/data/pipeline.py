"""grain pipelines: an endless shuffled train stream and one padded pass over the videos for evaluation.

Both are defined over the *global* batch: one shuffled order of records for the whole run, cut into
global batches; each JAX process reads only its own rows of each batch (`rows`, from
sharding.process_rows), and each clip's random augmentation is seeded by its global position. So the
clips a step trains on do not depend on how many processes read them, and a run resumed from a saved
iterator state continues with exactly the batches an uninterrupted run would have seen.

Train batches: {"video": float32 (b, T, H, W, 3), "label": (b,)}. Eval batches: {"video": float32
(b, views, T, H, W, 3), "label", "mask" (1: a real video), "bad" (1: a video that could not be read)};
padding fills the last batch so every process runs the same steps.
"""

import math
import os

import grain
import numpy as np

CGROUP = "/sys/fs/cgroup"  # what a process (in a container: the container) sees of its cgroup


def _global_position(position, global_batch, rows):
  """Position in this process's stream of `rows` (start, stop) of each global batch -> position in the
  global stream."""
  lo, hi = rows
  return (position // (hi - lo)) * global_batch + lo + position % (hi - lo)


class _ReadRow:
  """Position in this process's stream -> its example: the record at that global position of the
  shuffled order, through `clip_fn` with an rng seeded by (seed, global position)."""

  def __init__(self, source, order, clip_fn, seed, global_batch, rows):
    self.source, self.order, self.clip_fn, self.seed = source, order, clip_fn, seed
    self.global_batch, self.rows = global_batch, rows

  def __call__(self, position):
    g = _global_position(position, self.global_batch, self.rows)
    example = self.clip_fn(self.source[self.order[g]], np.random.default_rng([self.seed, g]))
    return {} if example is None else example  # not None: grain's workers would drop it, out of turn


def usable_cpus(cgroup=CGROUP):
  """The CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota (v2 cpu.max, or v1
  cpu.cfs_quota_us and cpu.cfs_period_us; a fractional quota rounded down, at least 1)."""
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
  quota = _read(cgroup, "cpu.max") or _read(cgroup, "cpu/cpu.cfs_quota_us") + _read(cgroup, "cpu/cpu.cfs_period_us")
  if len(quota) != 2 or quota[0] in ("max", "-1"):  # no cgroup files, or no quota
    return cpus
  return max(1, min(cpus, int(quota[0]) // int(quota[1])))


def _read(folder, name):
  """The words of a file, or [] if it cannot be read."""
  try:
    with open(os.path.join(folder, name)) as f:
      return f.read().split()
  except OSError:
    return []


def auto_workers(cpus, processes_on_host=1):
  """data.workers=-1: grain worker processes for one JAX process, its share of the host's usable `cpus`
  less one CPU for itself (0: the main process reads)."""
  return max(cpus // max(processes_on_host, 1) - 1, 0)


def train_dataset(source, *, global_batch, seed, clip_fn, rows=None, workers=0):
  """Endless stream of this process's `rows` (default: all) of each global batch, reshuffled every
  epoch; `clip_fn(record, rng)` makes one example (or None to skip an unreadable record). Deterministic
  in `seed`. Its iterator's get_state()/set_state() resume it exactly (checkpoints save it)."""
  rows = rows or (0, global_batch)
  order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
  read = _ReadRow(source, order, clip_fn, seed, global_batch, rows)
  ds = grain.MapDataset.range(len(order) // global_batch * (rows[1] - rows[0])).map(read)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, workers), prefetch_buffer_size=2))
  if workers:  # workers make examples (worker k every k-th of them, interleaved back in order); batches are
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))  # cut here, so they are the same
  return ds.filter(bool).batch(rows[1] - rows[0], drop_remainder=True)  # {}: an unreadable record, skipped


def eval_dataset(source, *, global_batch, views_fn, rows=None):
  """One pass over every video, this process's `rows` of each global batch: `views_fn(record)` gives a
  video's views; `views_fn.blank()` pads."""
  rows = rows or (0, global_batch)
  padded_len = math.ceil(len(source) / global_batch) * global_batch

  def example(index):
    if index >= len(source):
      return views_fn.blank()
    return {"bad": np.float32(0), **views_fn(source[index])}

  per_batch = rows[1] - rows[0]
  positions = lambda i: _global_position(i, global_batch, rows)
  ds = grain.MapDataset.range(padded_len // global_batch * per_batch).map(positions).map(example)
  return ds.batch(per_batch)
