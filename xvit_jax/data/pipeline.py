"""grain pipelines: an endless shuffled train stream and one padded pass over the videos for evaluation.

Both are defined over the *global* batch: one shuffled order of records for the whole run, cut into
global batches; each JAX process reads only its own rows of each batch (`rows`, from
sharding.process_rows), and each clip's random augmentation is seeded by its global position. So the
clips a step trains on do not depend on how many processes read them, and a run resumed from a saved
iterator state continues with exactly the batches an uninterrupted run would have seen.

An unreadable record never shifts a batch: its row takes the next readable record of the shuffled order
(a real clip with its real label) and is counted. Mixup mixes fixed groups of consecutive rows of the
global batch; its draws (lambda, partners) come from an rng of (seed, step, group), here on the host, and
the videos are mixed on the device (xvit_jax.preprocess): the same whatever the mesh or processes.

Batches hold pixels, not model input: xvit_jax.preprocess turns them into it inside the jit'd steps.
Train batches: {"video": uint8 (b, T, H, W, 3), "label": (b,) or (b, heads), "bad": int32 (b,) (1: the
row's own record was unreadable)}, with random erasing also "erase": int32 (b, 4), each clip's box (top,
left, h, w; zeros: none), and with mixup "mixup_partner" (int32: the row within its group whose video is
mixed in), "mixup_label" and "mixup_lam" (transforms.mixup).
Eval batches: {"video": uint8 windows (b, views, T, window, window, 3) with the resize taps "rows",
"row_weights", "cols", "col_weights" (b, views, S, 2) (sources.EvalViews; the device cuts the views), "label",
"mask" (1: a real video), "bad" (1: a video that could not be read)}; padding fills the last batch so every
process runs the same steps.
"""

import math
import os

import grain
import numpy as np

from xvit_jax import fields
from xvit_jax.data import transforms
from xvit_jax.errors import UserError

CGROUP = "/sys/fs/cgroup"  # what a process (in a container: the container) sees of its cgroup


def _global_position(position, global_batch, rows):
  """Position in this process's stream of `rows` (start, stop) of each global batch -> position in the
  global stream."""
  lo, hi = rows
  return (position // (hi - lo)) * global_batch + lo + position % (hi - lo)


class _ReadGroup:
  """Index in this process's stream of groups -> one group: `group` consecutive rows of a global batch.

  The row at global position g is the record at g of the shuffled order through `clip_fn` with an rng
  seeded by (seed, g); if that record is unreadable, the next readable one (g+1, g+2, ...) with the same
  rng, marked "bad": 1. With mixup (alpha > 0) the group's mixup draws (transforms.mixup) come from an rng
  seeded by (seed, step, group index). Nothing here depends on which process reads the group, or how many do."""

  def __init__(self, source, order, clip_fn, seed, global_batch, rows, group, alpha):
    self.source, self.order, self.clip_fn, self.seed = source, order, clip_fn, seed
    self.global_batch, self.rows, self.group, self.alpha = global_batch, rows, group, alpha

  def row(self, g):
    for k in range(2 * len(self.source)):  # any 2 x len(source) positions of the order hold a whole epoch
      example = self.clip_fn(self.source[self.order[g + k]], np.random.default_rng([self.seed, g]))
      if example is not None:
        return {**example, "bad": np.int32(k > 0)}
    raise UserError(f"no record of the training split can be read (all {len(self.source)} are unreadable)")

  def __call__(self, index):
    first = _global_position(index * self.group, self.global_batch, self.rows)
    clips = [self.row(g) for g in range(first, first + self.group)]
    if self.alpha:
      step, offset = divmod(first, self.global_batch)
      clips = transforms.mixup(clips, np.random.default_rng([self.seed, step, offset // self.group]), self.alpha)
    return clips


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


def _stack(groups):
  """Groups of examples -> one batch: each field stacked over all their examples, in order."""
  examples = [example for group in groups for example in group]
  return {key: np.stack([example[key] for example in examples]) for key in examples[0]}


def train_dataset(source, *, global_batch, seed, clip_fn, rows=None, workers=0, mixup=0.0, mixup_group=1):
  """Endless stream of this process's `rows` (default: all) of each global batch, reshuffled every
  epoch; `clip_fn(record, rng)` makes one example, or None for an unreadable record, which is replaced
  (see _ReadGroup) and counted in the batch's "bad". With `mixup` (an alpha > 0) each group of
  `mixup_group` consecutive rows of the global batch draws its mixup (transforms.mixup); UserError naming
  config.augment.mixup_group if it does not divide the batch and this process's rows of it. Deterministic
  in `seed`. Its iterator's get_state()/set_state() resume it exactly (checkpoints save it)."""
  rows = rows or (0, global_batch)
  per_batch, group = rows[1] - rows[0], mixup_group if mixup else 1
  if global_batch % group or rows[0] % group or per_batch % group:
    fields.fail("augment.mixup_group", group, f"a divisor of batch_size={global_batch} and of the {per_batch} rows "
                f"{rows[0]}..{rows[1] - 1} of it that this process reads")
  order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
  read = _ReadGroup(source, order, clip_fn, seed, global_batch, rows, group, mixup)
  ds = grain.MapDataset.range(len(order) // global_batch * (per_batch // group)).map(read)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, workers), prefetch_buffer_size=2))
  if workers:  # workers make groups (worker k every k-th of them, interleaved back in order); batches are
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))  # cut here, so they are the same
  return ds.batch(per_batch // group, drop_remainder=True, batch_fn=_stack)


class _EvalExample:
  """Index in this process's stream of videos -> the views of the video at that global position (padding
  past the end of the split)."""

  def __init__(self, source, views_fn, global_batch, rows):
    self.source, self.views_fn, self.global_batch, self.rows = source, views_fn, global_batch, rows

  def __call__(self, index):
    position = _global_position(index, self.global_batch, self.rows)
    if position >= len(self.source):
      return self.views_fn.blank()
    return {"bad": np.float32(0), **self.views_fn(self.source[position])}


def eval_dataset(source, *, global_batch, views_fn, rows=None, workers=0):
  """One pass over every video, this process's `rows` of each global batch: `views_fn(record)` gives a
  video's views; `views_fn.blank()` pads. With `workers` grain worker processes make the batches (worker k
  every k-th batch, in order): the same batches as without."""
  rows = rows or (0, global_batch)
  padded_len = math.ceil(len(source) / global_batch) * global_batch
  per_batch = rows[1] - rows[0]
  ds = grain.MapDataset.range(padded_len // global_batch * per_batch).map(
      _EvalExample(source, views_fn, global_batch, rows)).batch(per_batch)
  if workers:
    ds = ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return ds
