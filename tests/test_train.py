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
  lams = {}  # group: the (smaller, larger) weights of its clips that mix two labels
  for g, rows in enumerate(t):
    pairs = {tuple(np.round(sorted(row[row > 0]), 5)) for row in rows if (row > 0).sum() == 2}
    assert len(pairs) <= 1, f"group {g} mixes with more than one lambda: {pairs}"
    lams.update((g, pair) for pair in pairs)
  assert len(lams) >= 2, "with alpha 0.4 clips of several groups mix two labels"
  assert len(set(lams.values())) == len(lams), "each group draws its own lambda"
  assert not np.allclose(mixed_targets, targets)
