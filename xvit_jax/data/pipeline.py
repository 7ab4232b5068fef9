"""grain pipelines: an endless shuffled train stream and one padded pass over the videos for evaluation.

Each JAX process reads its own shard of the source (records process_index::process_count) and yields
its share of the global batch as numpy. Train batches: {"video": float32 (b, T, H, W, 3), "label": (b,)}.
Eval batches: {"video": float32 (b, views, T, H, W, 3), "label", "mask" (1: a real video), "bad"
(1: a video that could not be read)}; padding fills the last batch so every process runs the same steps.
"""

import math

import grain
import jax
import numpy as np

from xvit_jax.data import video

normalize = video.normalize  # uint8 -> float32 in [-1, 1], the official normalisation


def _process_batch_size(global_batch):
  return global_batch // jax.process_count()


def train_dataset(source, *, global_batch, seed, clip_fn, workers=0):
  """Endless stream of batches, reshuffled every epoch; `clip_fn(record, rng)` makes one example (or None
  to skip an unreadable record). Deterministic in `seed`: the rng of each example derives from it."""
  ds = grain.MapDataset.source(source)[jax.process_index()::jax.process_count()]
  ds = ds.shuffle(seed=seed).repeat().random_map(clip_fn, seed=seed)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, workers), prefetch_buffer_size=2))
  ds = ds.filter(lambda example: example is not None).batch(_process_batch_size(global_batch), drop_remainder=True)
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return ds


def eval_dataset(source, *, global_batch, views_fn):
  """One pass over every video: `views_fn(record)` gives its views; `views_fn.blank()` pads."""
  padded_len = math.ceil(len(source) / global_batch) * global_batch

  def example(index):
    if index >= len(source):
      return views_fn.blank()
    return {"bad": np.float32(0), **views_fn(source[index])}

  ds = grain.MapDataset.range(padded_len)[jax.process_index()::jax.process_count()].map(example)
  return ds.batch(_process_batch_size(global_batch))
