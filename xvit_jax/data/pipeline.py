"""grain pipelines: an endless shuffled train stream and a single padded pass for evaluation.

Each JAX process reads its own shard of the source (records process_index::process_count) and yields
its share of the global batch as numpy: {"video": float32 (b, T, H, W, 3) in [-1, 1], "label": int32 (b,)}
plus, for evaluation, "mask" (1 for real clips, 0 for padding that fills the last batch).
"""

import math

import grain
import jax
import numpy as np


def normalize(video):
  """uint8 frames -> float32 in [-1, 1]: (x / 255 - 0.5) / 0.5, the official normalisation."""
  return video.astype(np.float32) / 127.5 - 1.0


def _to_model_input(example):
  return {"video": normalize(example["video"]), "label": np.int32(example["label"])}


def _process_batch_size(global_batch):
  return global_batch // jax.process_count()


def train_dataset(source, *, global_batch, seed, workers=0):
  """Endless stream of batches, reshuffled every epoch; a grain IterDataset (its iterators checkpoint)."""
  ds = grain.MapDataset.source(source)[jax.process_index()::jax.process_count()]
  ds = ds.shuffle(seed=seed).repeat().map(_to_model_input).batch(_process_batch_size(global_batch), drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, workers), prefetch_buffer_size=2))
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return ds


def eval_dataset(source, *, global_batch):
  """One pass over every clip, padded to whole global batches so every process runs the same steps."""
  padded_len = math.ceil(len(source) / global_batch) * global_batch

  def example(index):
    if index < len(source):
      return {**_to_model_input(source[index]), "mask": np.float32(1)}
    blank = _to_model_input(source[0])
    return {"video": np.zeros_like(blank["video"]), "label": np.int32(0), "mask": np.float32(0)}

  ds = grain.MapDataset.range(padded_len)[jax.process_index()::jax.process_count()].map(example)
  return ds.batch(_process_batch_size(global_batch))
