"""The training loop: build the sharded state, jit the step, log, evaluate and checkpoint."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from xvit_jax import checkpoints, config_lib, evaluate, optim, sharding
from xvit_jax.convert import pretrained
from xvit_jax.data import pipeline, sources
from xvit_jax.metric_writer import MetricWriter, format_duration
from xvit_jax.models import create_model


def create_train_state(config, tx, mesh):
  """(graphdef, state): state = {"step", "params", "opt_state"}, created directly on the devices."""
  make_model = lambda: create_model(config.model, dtype=config.dtype, seed=config.seed)
  graphdef, _ = nnx.split(nnx.eval_shape(make_model))

  def init():
    params = nnx.state(make_model(), nnx.Param)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  abstract = jax.eval_shape(init)
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  return graphdef, jax.jit(init, out_shardings=shardings)()


def mixup(video, targets, rng, alpha, groups):
  """Mixup within each of `groups` equal slices of the batch (one per data shard, as the official code
  mixes each GPU's batch): one lambda ~ Beta(alpha, alpha) and one permutation per slice."""
  b = video.shape[0] // groups
  lam_rng, perm_rng = jax.random.split(rng)
  lam = jax.random.beta(lam_rng, alpha, alpha, (groups,))
  perm = jax.vmap(lambda key: jax.random.permutation(key, b))(jax.random.split(perm_rng, groups))

  def mix(x):
    x = x.reshape(groups, b, *x.shape[1:])
    other = jnp.take_along_axis(x, perm.reshape(groups, b, *([1] * (x.ndim - 2))), axis=1)
    w = lam.reshape(groups, *([1] * (x.ndim - 1))).astype(x.dtype)
    return (w * x + (1 - w) * other).reshape(groups * b, *x.shape[2:])

  return mix(video), mix(targets)


def make_train_step(config, graphdef, tx, schedule, groups=1):
  """jit'd (state, batch) -> (state, metrics). With several label heads (EPIC verb and noun) the loss is
  the sum of the heads' cross-entropies and the accuracy counts clips with every head right."""
  heads, smoothing, alpha = config_lib.label_heads(config), config.optimizer.label_smoothing, config.augment.mixup
  bounds = np.cumsum([0] + [size for _, size in heads])

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.key(config.seed), state["step"])
    dropout_rng, mixup_rng = jax.random.split(rng)
    video, labels = batch["video"], batch["label"].reshape(batch["label"].shape[0], -1)  # (B, heads)
    targets = jnp.concatenate([optax.smooth_labels(jax.nn.one_hot(labels[:, g], size), smoothing)
                               for g, (_, size) in enumerate(heads)], axis=-1)
    if alpha:
      video, targets = mixup(video, targets, mixup_rng, alpha, groups)

    def loss_fn(params):
      logits = nnx.merge(graphdef, params)(video, train=True, rngs=nnx.Rngs(dropout=dropout_rng))
      losses = [optax.softmax_cross_entropy(logits[:, lo:hi], targets[:, lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
      return sum(losses).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state}
    right = jnp.stack([jnp.argmax(logits[:, lo:hi], -1) == labels[:, g]
                       for g, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]).all(axis=0)
    metrics = {"train/loss": loss, "train/accuracy": jnp.mean(right), "train/learning_rate": schedule(state["step"])}
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=0)


def _pure(params):
  return nnx.to_pure_dict(params)


def _set_params(state, pure):
  nnx.replace_by_pure_dict(state["params"], pure)


def restore_or_initialise(config, state, ckpt, writer):
  """The newest checkpoint in the workdir if there is one (with its optimizer state when it has it),
  else `config.init_from` if set, else `state` as created."""
  step = ckpt.latest_step()
  if step is not None:
    _set_params(state, checkpoints.restore_params(ckpt, step, _pure(state["params"])))
    if checkpoints.has_train_state(ckpt, step):
      restored = checkpoints.restore_train(ckpt, step, {"step": state["step"], "opt_state": state["opt_state"]})
      state.update(restored)
      writer.print(f"resumed from {ckpt.directory}/{step}")
    else:
      writer.print(f"starting from the weights in {ckpt.directory}/{step} with a fresh optimizer")
  elif config.init_from:
    params, report = pretrained.load(config.init_from, config.model, jax.device_get(_pure(state["params"])))
    _set_params(state, jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), params, _pure(state["params"])))
    writer.print(f"initialised from {config.init_from}: {len(report['loaded'])} parameters loaded, "
                 f"fresh: {', '.join(report['fresh']) or 'none'}; ignored from the file: "
                 f"{', '.join(report['dropped']) or 'nothing'}")
  return state


def train_and_evaluate(config, workdir, *, mode="train"):
  """Trains `config` for config.total_steps (mode "train"), resuming from workdir's newest checkpoint if
  there is one, or only evaluates that checkpoint (mode "evaluate")."""
  config_lib.check(config, jax.device_count())
  mesh = sharding.make_mesh()
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  graphdef, state = create_train_state(config, tx, mesh)
  writer = MetricWriter(workdir)
  ckpt = checkpoints.manager(workdir, create=mode == "train")
  try:
    state = restore_or_initialise(config, state, ckpt, writer)
    first_step = int(state["step"])

    train_step = make_train_step(config, graphdef, tx, schedule, groups=jax.device_count())
    eval_step = evaluate.make_eval_step(graphdef, config_lib.label_heads(config))
    to_global = lambda batch: sharding.global_batch(mesh, batch)
    eval_source, views_fn = sources.source(config, "eval"), sources.EvalViews(config)
    run_eval = lambda params: evaluate.evaluate(
        eval_step, params, pipeline.eval_dataset(eval_source, global_batch=config.batch_size, views_fn=views_fn),
        to_global)

    if mode == "evaluate":
      results = run_eval(state["params"])
      writer.print("evaluation: " + " | ".join(f"{k} {v:.4f}" if k not in ("eval/videos", "eval/skipped") else f"{k} {v:.0f}"
                                               for k, v in results.items()))
      writer.write(first_step, results)
      return results

    train_batches = iter(pipeline.train_dataset(
        sources.source(config, "train"), global_batch=config.batch_size, seed=config.seed + first_step,
        clip_fn=sources.TrainClip(config), workers=config.data.workers))
    writer.print(f"training {config.model.attention} X-ViT, {sum(x.size for x in jax.tree.leaves(state['params'])):,} "
                 f"parameters, {jax.device_count()} device(s), steps {first_step}..{config.total_steps}")
    pending, timer_start, timed_steps, started = [], None, 0, time.time()
    for step in range(first_step + 1, config.total_steps + 1):
      state, metrics = train_step(state, to_global(next(train_batches)))
      pending.append(metrics)
      record = {}
      if step % (config.log_every or config.total_steps) == 0 or step == config.total_steps:
        record = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
        if timer_start is None:  # the first interval holds compilation: time from here on
          timer_start, timed_steps = time.time(), step
          clips_per_sec = float("nan")
        else:
          clips_per_sec = (step - timed_steps) * config.batch_size / (time.time() - timer_start)
        if clips_per_sec == clips_per_sec:
          record["train/clips_per_sec"] = clips_per_sec
        pending = []
        eta = (config.total_steps - step) * config.batch_size / clips_per_sec if clips_per_sec > 0 else float("nan")
        writer.print(f"step {step}/{config.total_steps} | loss {record['train/loss']:.4f} | "
                     f"acc {record['train/accuracy']:.3f} | {clips_per_sec:.1f} clips/s | "
                     f"ETA {format_duration(eta) if eta == eta else '?'}")
      if (config.eval_every and step % config.eval_every == 0) or step == config.total_steps:
        results = run_eval(state["params"])
        record.update(results)
        writer.print(f"eval at step {step}: top1 {results['eval/top1']:.4f} | top5 {results['eval/top5']:.4f} | "
                     f"loss {results['eval/loss']:.4f} | {format_duration(time.time() - started)} elapsed")
      writer.write(step, record)
      if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.total_steps:
        checkpoints.save(ckpt, step, _pure(state["params"]), {"step": state["step"], "opt_state": state["opt_state"]})
    ckpt.wait_until_finished()
    return state
  finally:
    ckpt.close()
    writer.close()
