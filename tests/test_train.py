"""Pieces of the train step: mixup within each device's slice of the batch."""

import jax
import jax.numpy as jnp
import numpy as np

from xvit_jax.train import mixup


def test_mixup_mixes_within_each_device_slice_with_one_lambda_each():
  groups, per_group, classes = 4, 3, 5
  # every clip is filled with its group's id, so mixing across groups would show
  video = jnp.repeat(jnp.arange(groups, dtype=jnp.float32), per_group)[:, None, None] * jnp.ones((1, 2, 2))
  labels = jnp.arange(groups * per_group) % classes
  targets = jax.nn.one_hot(labels, classes)
  mixed_video, mixed_targets = mixup(video, targets, jax.random.key(0), 0.4, groups)
  np.testing.assert_allclose(mixed_video, video)  # same-group partners only
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
  t = np.asarray(mixed_targets).reshape(groups, per_group, classes)
  lams = [sorted(np.round(row[row > 0], 5)) for g in t for row in g if (row > 0).sum() == 2]
  assert lams, "with alpha 0.4 some clips mix two labels"
  assert not np.allclose(mixed_targets, targets)
