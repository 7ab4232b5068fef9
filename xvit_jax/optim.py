"""The paper's optimizer (reference section 6): Nesterov SGD, coupled weight decay, warmup + cosine."""

import jax
import jax.numpy as jnp
import optax

from xvit_jax import trees


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
