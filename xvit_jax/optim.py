"""The paper's optimizer (reference section 6): Nesterov SGD, coupled weight decay, warmup + cosine."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from xvit_jax import fields, trees


def learning_rate_schedule(cfg, total_steps):
  """Cosine from `learning_rate` to 0 over all steps, every step; the first `warmup_steps` rise linearly
  from `warmup_start_lr` to the cosine's value at the end of warmup (the official lr_policy)."""
  peak, warmup, start = cfg.learning_rate, cfg.warmup_steps, cfg.warmup_start_lr
  cosine = lambda step: peak * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(step, total_steps) / total_steps))

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if not warmup:
      return cosine(step)
    ramp = start + (cosine(warmup) - start) * step / warmup
    return jnp.where(step < warmup, ramp, cosine(step))

  return schedule


def decay_mask(params):
  """Weight decay on every parameter, embeddings and norms included, except the biases of the
  classifier head (official: biases of modules named *head*; the head's transformer layer decays)."""
  def decays(path, _):
    keys = trees.path_name(path).split("/")
    return not (keys[0] == "head" and keys[-1] == "bias" and "encoder" not in keys)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg, total_steps):
  """optax chain: [clip] -> add decayed weights -> SGD with (Nesterov) momentum on the schedule."""
  schedule = learning_rate_schedule(cfg, total_steps)
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity(),
      optax.add_decayed_weights(cfg.weight_decay, decay_mask),
      optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
  ), schedule


def default_config():
  """The `optimizer` section (the paper's recipe at batch 64)."""
  o = ml_collections.ConfigDict()
  o.learning_rate = 0.03  # peak, reached after warmup; cosine to zero at total_steps
  o.warmup_steps = 100
  o.warmup_start_lr = 0.0
  o.momentum = 0.9
  o.nesterov = True
  o.weight_decay = 1e-5  # coupled (added to the gradient), as torch SGD in the official code
  o.grad_clip = 0.0  # global-norm clipping; 0: off
  o.label_smoothing = 0.0
  return o


def check_config(config):
  """UserError naming the field for an `optimizer` value the run could not use."""
  o = config.optimizer
  fields.rate(config, "optimizer.label_smoothing")
  fields.non_negative(config, "optimizer.warmup_steps")
  if o.warmup_steps >= config.total_steps:
    fields.fail("optimizer.warmup_steps", o.warmup_steps,
                f"fewer than total_steps={config.total_steps} (warmup rises to the cosine's value at its end, "
                "which is 0 at total_steps: the learning rate would stay 0)")
  if o.learning_rate <= 0:
    fields.fail("optimizer.learning_rate", o.learning_rate, "a positive number")
