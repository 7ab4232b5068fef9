"""The paper's optimizer (reference section 6): Nesterov SGD, coupled weight decay, warmup + cosine, and its
schedule in epochs at any global batch (`resolve_schedule`)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax
from ml_collections import config_dict

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
  # A recipe gives its rates at a batch and lets learning_rate / warmup_start_lr follow the global batch
  # (derive_schedule): rate = base rate x lr_scaling(batch_size / base_batch).
  o.base_batch = 64  # the official 8 GPUs x 8 clips
  o.base_learning_rate = 0.03
  o.base_warmup_start_lr = 0.0
  o.lr_scaling = "linear"  # linear (rate x ratio), sqrt (rate x sqrt(ratio)) or none
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


# ------------------------------------------------------------------------------------ the schedule in epochs

LR_SCALING = {"linear": lambda ratio: ratio, "sqrt": math.sqrt, "none": lambda ratio: 1.0}
DERIVED = {"steps_per_epoch": int, "total_steps": int, "optimizer.warmup_steps": int, "eval_every": int,
           "checkpoint_every": int, "optimizer.learning_rate": float, "optimizer.warmup_start_lr": float}


def derive_schedule(config):
  """A recipe's schedule in epochs: every field of DERIVED becomes None (a typed placeholder), derived at
  start from the epochs, the base rates and the global batch unless the command line or a config sets it."""
  for field, kind in DERIVED.items():
    fields.put(config, field, config_dict.placeholder(kind))
  return config


def resolve_schedule(config):
  """(a copy of `config` with each DERIVED field that is None filled in, the lines that say every number
  and where it came from; no lines for a config that states no epochs and derives nothing).

  steps_per_epoch = floor(data.train_videos / batch_size) (the official loader drops the last partial
  batch); total_steps, warmup_steps, eval_every and checkpoint_every = epochs, warmup_epochs,
  eval_every_epochs and checkpoint_every_epochs x steps_per_epoch; learning_rate and warmup_start_lr = their
  base_* x the lr_scaling factor of batch_size / base_batch. A field that is set is taken as it is."""
  check_schedule(config)
  c, lines, known, derived = config.copy_and_resolve_references(), [], {}, []
  batch, o = c.batch_size, c.optimizer

  def fill(field, needs, compute, how):
    """The value of `field`: as set, or computed from the fields `needs` (each must be set)."""
    if field not in known:
      value = fields.find(c, field)
      if value is not None:
        lines.append(f"  {field} {_number(value)} (set explicitly)")
      else:
        missing = [need for need in needs if fields.find(c, need) is None]
        if missing:
          fields.fail(field, None, f"set it, or {' and '.join(f'config.{m}' for m in missing)} to derive it")
        value = compute()
        fields.put(c, field, value)
        derived.append(field)
        lines.append(f"  {field} {_number(value)} = {how()}")
      known[field] = value
    return known[field]

  def steps_per_epoch():
    def compute():
      videos = c.data.train_videos
      if videos < batch:
        fields.fail("batch_size", batch, f"at most data.train_videos={videos} (an epoch is one step or more)")
      return videos // batch
    return fill("steps_per_epoch", ["data.train_videos"], compute,
                lambda: f"floor(data.train_videos {c.data.train_videos} / batch_size {batch})")

  for field, epochs in (("total_steps", "epochs"), ("optimizer.warmup_steps", "warmup_epochs"),
                        ("eval_every", "eval_every_epochs"), ("checkpoint_every", "checkpoint_every_epochs")):
    fill(field, [epochs], lambda e=epochs: c[e] * steps_per_epoch(),
         lambda e=epochs: f"{e} {c[e]} x {known['steps_per_epoch']}")
  for field in ("optimizer.learning_rate", "optimizer.warmup_start_lr"):
    base = "base_" + field.split(".")[1]
    fill(field, [f"optimizer.{base}", "optimizer.base_batch", "optimizer.lr_scaling"],
         lambda b=base: float(f"{o[b] * _lr_factor(o, batch):.12g}"),
         lambda b=base: f"{b} {_number(o[b])} x {_number(_lr_factor(o, batch))} (lr_scaling {o.lr_scaling}, "
                        f"batch_size {batch} / base_batch {o.base_batch})")
  if not derived and fields.find(c, "epochs") is None:
    return c, []  # no epochs stated, nothing derived: the steps and rates are the config's own
  return c, [f"schedule at batch_size {batch}:", *lines]


def _number(value):
  return str(value) if isinstance(value, int) else f"{value:.6g}"


def _lr_factor(o, batch):
  return LR_SCALING[o.lr_scaling](batch / o.base_batch)


def check_schedule(config):
  """UserError naming the field for an input of the schedule in epochs that could not be used (each one
  checked where the config has it: a config written before the schedule in epochs has none of them)."""
  fields.positive_int(config, "batch_size")
  value = lambda field: fields.find(config, field)
  for field in ("epochs", "steps_per_epoch", "data.train_videos", "optimizer.base_batch"):
    if value(field) is not None:
      fields.positive_int(config, field)
  epochs, warmup = value("epochs"), value("warmup_epochs")
  if warmup is not None and (not isinstance(warmup, int) or warmup < 0 or (epochs is not None and warmup >= epochs)):
    fields.fail("warmup_epochs", warmup, f"an integer >= 0 and below epochs={epochs}")
  for field in ("eval_every_epochs", "checkpoint_every_epochs"):
    if value(field) is not None:
      fields.non_negative(config, field)
  if value("optimizer.lr_scaling") is not None:
    fields.one_of(config, "optimizer.lr_scaling", tuple(LR_SCALING))
  rate, start = value("optimizer.base_learning_rate"), value("optimizer.base_warmup_start_lr")
  if rate is not None and not rate > 0:
    fields.fail("optimizer.base_learning_rate", rate, "a positive number")
  if start is not None and not start >= 0:
    fields.fail("optimizer.base_warmup_start_lr", start, "a number >= 0")
