"""The train state (state.py) and the train step: mixup in fixed groups of the global batch, the official
mixup-with-label-smoothing loss, abstract state for ahead-of-time compilation, checkpoint items."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from xvit_jax import checkpoints, config_lib, optim, preprocess, sharding, train
from xvit_jax import state as state_lib
from xvit_jax.data import pipeline, sources, synthetic, transforms
from xvit_jax.errors import UserError

def batches(config, count, rows=None, mixup=0.4, group=4, global_batch=8):
  """The first `count` train batches of the synthetic task, this process's `rows` of each (default: all)."""
  ds = pipeline.train_dataset(synthetic.from_config(config, "train"), global_batch=global_batch, seed=5, rows=rows,
                              clip_fn=sources.TrainClip(config), mixup=mixup, mixup_group=group)
  return [batch for _, batch in zip(range(count), iter(ds))]


def test_mixup_mixes_fixed_groups_of_the_global_batch_whoever_reads_them():
  """Groups of mixup_group consecutive rows of the global batch, one lambda and one permutation each, drawn
  from (seed, step, group): the same batches whether one process reads all rows or two read half each. The
  pipeline sends the clips unmixed (uint8) with the draws; the train step's preprocessing mixes them."""
  config = tiny_config()
  mixed, plain = batches(config, 2), batches(config, 2, mixup=0.0)
  halves = [batches(config, 2, rows=rows) for rows in ((0, 4), (4, 8))]
  for batch, first, second in zip(mixed, *halves):
    for key in ("video", "label", "mixup_partner", "mixup_label", "mixup_lam", "bad"):
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), batch[key])
  lams = set()
  inputs = jax.jit(preprocess.train_inputs, static_argnums=1)
  for batch, clean in zip(mixed, plain):
    assert batch["video"].dtype == np.uint8
    np.testing.assert_array_equal(batch["video"], clean["video"])  # mixed on the device, not here
    video, clean_video = np.asarray(inputs(batch, 4)), np.asarray(preprocess.normalize(clean["video"]))
    for rows in (slice(0, 4), slice(4, 8)):  # each group: one lambda, partners a permutation of the group
      lam, video_rows, clean_rows = batch["mixup_lam"][rows], video[rows], clean_video[rows]
      assert np.all(lam == lam[0]) and 0 < lam[0] < 1
      lams.add(float(lam[0]))
      partners = [int(np.argmin([np.abs(video_rows[i] - lam[0] * clean_rows[i] - (1 - lam[0]) * other).max()
                                 for other in clean_rows])) for i in range(4)]
      assert sorted(partners) == [0, 1, 2, 3] and partners != [0, 1, 2, 3]
      np.testing.assert_array_equal(batch["mixup_partner"][rows], partners)
      np.testing.assert_allclose(video_rows, lam[0] * clean_rows + (1 - lam[0]) * clean_rows[partners], atol=1e-6)
      np.testing.assert_array_equal(batch["mixup_label"][rows], clean["label"][rows][partners])
      np.testing.assert_array_equal(batch["label"][rows], clean["label"][rows])
  assert len(lams) == 4  # each group of each step drew its own lambda


def test_a_mixup_group_that_does_not_divide_the_batch_or_a_process_rows_is_a_config_error():
  config = tiny_config()
  config.augment.mixup, config.augment.mixup_group = 0.4, 3
  with pytest.raises(UserError, match=r"^config.augment.mixup_group=3 is not allowed: a divisor of batch_size=4$"):
    config_lib.check(config, num_devices=1)
  config.augment.mixup = 0.0  # mixup off: the group is not used
  config_lib.check(config, num_devices=1)
  with pytest.raises(UserError, match=r"^config.augment.mixup_group=4 is not allowed: a divisor of batch_size=8 and "
                                      r"of the 2 rows 2..3 of it that this process reads$"):
    batches(config, 1, rows=(2, 4))


def small_run(config):
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  return mesh, tx, schedule


def test_the_step_from_the_abstract_state_gives_the_official_mixup_and_smoothing_loss():
  """The step compiled ahead of time from state.abstract (nothing allocated) runs on state.create's state;
  on uint8 clips with transforms.mixup's draws and erasing boxes, with two label heads (EPIC's verb and noun),
  its loss is that of the model on the host's old normalised, erased, mixed clips: the sum over the heads of
  the official lam * L(y_a) + (1 - lam) * L(y_b), L = timm's LabelSmoothingCrossEntropy; it counts the rows
  the pipeline marked as replaced bad records."""
  config = tiny_config(num_classes=5)
  config.data.label_heads, config.optimizer.label_smoothing, smoothing = "verb:2,noun:3", 0.3, 0.3
  config.augment.mixup, config.augment.mixup_group = 0.4, 4  # the groups the step mixes within
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
  clips = [{"video": rng.integers(0, 256, (m.num_frames, m.image_size, m.image_size, 3), dtype=np.uint8),
            "label": np.array([i % 2, i % 3], np.int32), "bad": np.int32(i in (2, 7)),
            "erase": np.array((i, 2, 5, 3) if i % 2 else (0, 0, 0, 0), np.int32)} for i in range(8)]
  clips = [c for group in (clips[:4], clips[4:]) for c in transforms.mixup(group, np.random.default_rng(1), 0.4)]
  batch = {key: np.stack([c[key] for c in clips]) for key in clips[0]}
  # the host's old clips: normalised, then the box set to 0, then mixed within the group (float32)
  host = (batch["video"].astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
  for clip, (top, left, h, w) in zip(host, batch["erase"]):
    clip[:, top:top + h, left:left + w] = 0
  partners = np.arange(8) // 4 * 4 + batch["mixup_partner"]
  lam = batch["mixup_lam"][:, None, None, None, None]
  host = lam * host + (1 - lam) * host[partners]
  batch_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  step = train.make_train_step(config, graphdef, tx, schedule, shardings=shardings)
  compiled = step.lower(abstract, batch_spec).compile()
  params = jax.tree.map(jnp.copy, state["params"])  # the step donates the state
  _, metrics = compiled(state, batch)

  lam, labels, partner_labels = batch["mixup_lam"].astype(np.float64), batch["label"], batch["mixup_label"]
  logits = np.asarray(nnx.merge(graphdef, params)(jnp.asarray(host)), np.float64)
  official = 0.0
  for head, (lo, hi) in enumerate([(0, 2), (2, 5)]):
    log_p = np.asarray(jax.nn.log_softmax(logits[:, lo:hi]))
    smooth_ce = lambda y, log_p=log_p: (1 - smoothing) * -log_p[np.arange(8), y] + smoothing * -log_p.mean(axis=1)
    official += np.mean(lam * smooth_ce(labels[:, head]) + (1 - lam) * smooth_ce(partner_labels[:, head]))
  assert lam.min() < 0.9 and (partner_labels != labels).any()  # clips of other classes were mixed in
  np.testing.assert_allclose(float(metrics["train/loss"]), official, rtol=1e-5)
  assert int(metrics["train/bad_records"]) == 2


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
