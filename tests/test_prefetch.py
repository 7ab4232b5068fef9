"""Batches placed on the devices one step ahead (prefetch.py): the data position a checkpoint saves is that of
the batches taken, never of the one held ahead, so a resumed stream continues with the next batch taken."""

import json
import time

import jax
import numpy as np
import pytest

from conftest import tiny_config
from xvit_jax import prefetch, sharding
from xvit_jax.data import pipeline, sources, synthetic
from xvit_jax.errors import UserError


def stream(config, clip_fn=None):
  ds = pipeline.train_dataset(synthetic.from_config(config, "train"), global_batch=4, seed=7,
                              clip_fn=clip_fn or sources.TrainClip(config))
  return iter(ds)


def place(batch):
  return sharding.global_batch(sharding.make_mesh(), batch)


def wait_until(predicate, timeout=30):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "the prefetch thread made no batch"
    time.sleep(0.01)


def test_the_saved_position_is_after_the_batches_taken_not_the_one_placed_ahead():
  config = tiny_config()
  plain = stream(config)
  expected = [next(plain) for _ in range(4)]
  ahead = prefetch.DevicePrefetch(stream(config), place)
  try:
    taken = [next(ahead) for _ in range(2)]
    assert all(isinstance(b["video"], jax.Array) and b["video"].dtype == np.uint8 for b in taken)  # on the devices
    for got, want in zip(taken, expected):
      np.testing.assert_array_equal(np.asarray(got["video"]), want["video"])
    wait_until(lambda: ahead.ready.qsize() == 1)  # batch 3 made and placed: the grain iterator is past it
    saved = json.loads(ahead.get_state())
    assert ahead.batches.get_state()["next_index"] == 3 * 4 and saved["next_index"] == 2 * 4  # rows of 4-row batches
    resumed = stream(config)
    resumed.set_state(saved)  # what checkpoints.restore_data does with the saved state
    np.testing.assert_array_equal(next(resumed)["video"], expected[2]["video"])
    np.testing.assert_array_equal(np.asarray(next(ahead)["video"]), expected[2]["video"])
    assert json.loads(ahead.get_state())["next_index"] == 3 * 4
  finally:
    ahead.close()
  assert not ahead.thread.is_alive()


def test_count_ends_the_stream_and_errors_are_raised_where_the_batch_is_taken():
  config = tiny_config()
  ahead = prefetch.DevicePrefetch(stream(config), place, count=2)
  assert len(list(ahead)) == 2  # no third batch made past the last step
  assert ahead.batches.get_state()["next_index"] == 2 * 4
  ahead.close()

  def unreadable(record, rng):
    del record, rng
    raise UserError("no record of the training split can be read")

  failing = prefetch.DevicePrefetch(stream(config, unreadable), place)
  for _ in range(2):  # and again at a later call, not a hang
    with pytest.raises(UserError, match="no record of the training split"):
      next(failing)
  failing.close()
