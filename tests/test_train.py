"""The train state (state.py) and the train step: mixup within each device's slice of the batch, the
official mixup-with-label-smoothing loss, abstract state for ahead-of-time compilation, checkpoint items."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import tiny_config
from xvit_jax import checkpoints, optim, sharding, train
from xvit_jax import state as state_lib

MIXUP = jax.jit(train.mixup, static_argnums=(3, 4))


def mixup_draws(rng, groups, per_group):
  """(lambda, partner) per row that train.mixup draws with `rng`, read off identity rows: row i comes out
  as lambda * e_i + (1 - lambda) * e_partner (partner i: the row is left as it is)."""
  b = groups * per_group
  mixed = np.asarray(MIXUP(jnp.eye(b), jnp.eye(b), rng, 0.4, groups)[0])
  lam, partner = np.ones(b), np.arange(b)
  for i, row in enumerate(mixed):
    if row[i] < 1 - 1e-6:
      others = np.where(np.arange(b) == i, 0, row)
      lam[i], partner[i] = row[i], int(np.argmax(others))
      np.testing.assert_allclose(row[partner[i]], 1 - lam[i], atol=1e-6)
      assert np.count_nonzero(np.abs(row) > 1e-6) <= 2
  return lam, partner


def test_mixup_mixes_within_each_device_slice_with_one_lambda_each():
  groups, per_group, classes = 4, 6, 5
  lam, partner = mixup_draws(jax.random.key(0), groups, per_group)
  group = np.arange(groups * per_group) // per_group
  assert np.array_equal(group[partner], group)  # partners come from the same slice
  lams = set()
  for g in range(groups):  # a permutation of the slice, and one lambda for all of it
    rows = np.flatnonzero(group == g)
    assert sorted(partner[rows]) == list(rows)
    mixed = rows[partner[rows] != rows]
    assert len(mixed) and np.allclose(lam[mixed], lam[mixed[0]], atol=1e-6)
    lams.add(round(float(lam[mixed[0]]), 5))
  assert len(lams) == groups  # each slice drew its own lambda

  rng = np.random.default_rng(1)  # the targets are mixed with the same lambda and partner as the clips
  video, targets = rng.normal(size=(24, 2, 3)).astype(np.float32), np.eye(classes, dtype=np.float32)[np.arange(24) % 5]
  mixed_video, mixed_targets = MIXUP(video, targets, jax.random.key(0), 0.4, groups)
  np.testing.assert_allclose(mixed_video, lam[:, None, None] * video + (1 - lam[:, None, None]) * video[partner],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mixed_targets, lam[:, None] * targets + (1 - lam[:, None]) * targets[partner],
                             rtol=1e-5, atol=1e-6)


def small_run(config):
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  return mesh, tx, schedule


def test_the_step_from_the_abstract_state_gives_the_official_mixup_and_smoothing_loss():
  """The step compiled ahead of time from state.abstract (nothing allocated) runs on state.create's state;
  its loss is the official lam * L(y_a) + (1 - lam) * L(y_b), L = timm's LabelSmoothingCrossEntropy."""
  config = tiny_config()
  config.augment.mixup, config.optimizer.label_smoothing, groups, smoothing = 0.4, 0.3, 2, 0.3
  mesh, tx, schedule = small_run(config)
  graphdef, abstract, shardings = state_lib.abstract(config, tx, mesh)
  graphdef_created, state, shardings_created = state_lib.create(config, tx, mesh)
  assert graphdef == graphdef_created and jax.tree.leaves(shardings) == jax.tree.leaves(shardings_created)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  for spec, leaf in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
    assert isinstance(spec, jax.ShapeDtypeStruct)
    assert (spec.shape, spec.dtype, spec.sharding) == (leaf.shape, leaf.dtype, leaf.sharding)

  m = config.model
  rng = np.random.default_rng(0)
  batch = {"video": rng.uniform(-1, 1, (8, m.num_frames, m.image_size, m.image_size, 3)).astype(np.float32),
           "label": np.arange(8, dtype=np.int32) % m.num_classes}
  batch_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  step = train.make_train_step(config, graphdef, tx, schedule, groups=groups, shardings=shardings)
  compiled = step.lower(abstract, batch_spec).compile()
  params = jax.tree.map(jnp.copy, state["params"])  # the step donates the state
  key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
  lam, partner = mixup_draws(jax.random.split(key)[1], groups, 4)
  _, metrics = compiled(state, batch)

  video, labels = batch["video"], batch["label"]
  mixed = lam[:, None, None, None, None] * video + (1 - lam[:, None, None, None, None]) * video[partner]
  log_p = np.asarray(jax.nn.log_softmax(nnx.merge(graphdef, params)(jnp.asarray(mixed))), np.float64)
  smooth_ce = lambda y: (1 - smoothing) * -log_p[np.arange(8), y] + smoothing * -log_p.mean(axis=1)
  official = np.mean(lam * smooth_ce(labels) + (1 - lam) * smooth_ce(labels[partner]))
  assert lam.min() < 0.9 and (labels[partner] != labels).any()  # clips of other classes were mixed in
  np.testing.assert_allclose(float(metrics["train/loss"]), official, rtol=1e-5)


def test_checkpoint_items_restore_the_whole_state(tmp_path):
  config = tiny_config()
  mesh, tx, _ = small_run(config)
  _, state, _ = state_lib.create(config, tx, mesh)
  state["params"] = jax.tree.map(lambda x: x + 1, state["params"])
  state.update(step=jnp.int32(7), nonfinite_steps=jnp.int32(2), rng=state["rng"] + 1)
  ckpt = checkpoints.manager(str(tmp_path / "run"))
  state_lib.save(ckpt, 7, state)
  checkpoints.wait(ckpt)

  fresh = jax.tree.map(jnp.zeros_like, state)  # a template laid out alike
  assert state_lib.restore(fresh, ckpt, 7)
  checkpoints.close(ckpt)
  assert set(fresh) == {"params", *state_lib.TRAIN_KEYS}
  for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)

  checkpoints.write_params(str(tmp_path / "weights"), state_lib.params_item(state), step=3)  # weights only
  fresh = jax.tree.map(jnp.zeros_like, state)
  weights = checkpoints.manager(str(tmp_path / "weights"), create=False)
  assert not state_lib.restore(fresh, weights, 3)
  checkpoints.close(weights)
  assert int(fresh["step"]) == 0 and int(fresh["nonfinite_steps"]) == 0
  for a, b in zip(jax.tree.leaves(fresh["params"]), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(a, b)
  model, step = state_lib.inference_model(config, str(tmp_path / "weights"))
  assert step == 3
  for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(a, b)
