"""Evaluation: top-1 / top-5 accuracy and loss over every held-out video, its views' logits summed
(padding masked out, unreadable videos counted)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from xvit_jax import data, fields, preprocess, sharding
from xvit_jax.data import pipeline, sources


def _joint_log_probs(logits, bounds):
  """log p(head 1 = a, head 2 = b, ...) = sum of the heads' log-softmax, flattened: (B, prod(sizes))."""
  joint = None
  for lo, hi in zip(bounds, bounds[1:]):
    part = jax.nn.log_softmax(logits[:, lo:hi])
    joint = part if joint is None else (joint[:, :, None] + part[:, None, :]).reshape(part.shape[0], -1)
  return joint


def make_eval_step(graphdef, label_heads=None, mesh=None):
  """jit'd (params, batch) -> sums over the batch's videos: "loss", "top1", "top5", "count", "skipped",
  and with several label heads (EPIC) "<head>_top1" / "<head>_top5" for each, "top1"/"top5" then being
  the action: every head right (top-5 over the joint scores, as the EPIC action metric).

  batch holds each video's views as windows of uint8 pixels and resize taps (data.pipeline), made the model's
  input here (preprocess.eval_views); the views' logits are summed per video (the official fusion).
  label_heads: (heads, bounds) as xvit_jax.data.label_heads gives them; None: one head. mesh: the one the
  batch is on, to trace over (sharding.traced_over); None: no mesh."""
  heads, bounds = label_heads or (None, None)

  def eval_step(params, batch):
    b, views = batch["video"].shape[:2]
    video = preprocess.eval_views(batch)
    logits = nnx.merge(graphdef, params)(video)
    logits = logits.reshape(b, views, -1).sum(axis=1)
    mask = batch["mask"]
    labels = batch["label"].reshape(b, -1)
    cuts = bounds if bounds is not None else np.array([0, logits.shape[-1]])
    sums = {"count": jnp.sum(mask), "skipped": jnp.sum(batch["bad"]), "loss": 0.0}
    joint_label = jnp.zeros((b,), jnp.int32)
    for g, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
      head = logits[:, lo:hi]
      sums["loss"] += jnp.sum(optax.softmax_cross_entropy_with_integer_labels(head, labels[:, g]) * mask)
      top = jax.lax.top_k(head, min(5, hi - lo))[1] == labels[:, g:g + 1]
      if len(cuts) > 2:
        sums[f"{heads[g][0]}_top1"] = jnp.sum(top[:, 0] * mask)
        sums[f"{heads[g][0]}_top5"] = jnp.sum(top.any(axis=1) * mask)
      joint_label = joint_label * (hi - lo) + labels[:, g]
    scores = _joint_log_probs(logits, cuts)
    top = jax.lax.top_k(scores, min(5, scores.shape[-1]))[1] == joint_label[:, None]
    sums["top1"], sums["top5"] = jnp.sum(top[:, 0] * mask), jnp.sum(top.any(axis=1) * mask)
    return sums

  return jax.jit(sharding.traced_over(mesh, eval_step))


def evaluate(eval_step, params, batches, to_global):
  """Runs `eval_step` over the numpy `batches` (one pass) -> {"eval/top1", "eval/top5", "eval/loss"} over
  the readable videos, and "eval/skipped": how many could not be read."""
  totals = None
  for batch in batches:
    sums = eval_step(params, to_global(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.tree.map(lambda x: float(np.asarray(x)), jax.device_get(totals))
  count = max(totals["count"], 1.0)
  names = ["top1", "top5"] + sorted(set(totals) - {"top1", "top5", "count", "skipped"})
  results = {f"eval/{name}": totals[name] / count for name in names}
  return {**results, "eval/videos": totals["count"], "eval/skipped": totals["skipped"]}


def default_config():
  """The `eval` section: how a whole video becomes views (predict, video evaluation)."""
  e = ml_collections.ConfigDict()
  e.sampling = "dense"  # dense: num_frames every `stride` frames (Kinetics) | segment: one per segment (SSv2)
  e.stride = 16  # dense sampling: source frames between two sampled frames
  e.temporal_views = 1  # clips per video; logits are summed over all views
  e.spatial_crops = 3  # 3: left/centre/right (or top/centre/bottom) crops of the short-side-resized video; 1: centre
  return e


def check_config(config):
  """UserError naming the field for an `eval` value the views could not use."""
  e = config.eval
  fields.one_of(config, "eval.sampling", ("dense", "segment"))
  if e.spatial_crops not in (1, 3):
    fields.fail("eval.spatial_crops", e.spatial_crops, "1 or 3")
  max_views = 3 if e.sampling == "segment" else 1_000
  if not 1 <= e.temporal_views <= max_views:
    fields.fail("eval.temporal_views", e.temporal_views, f"an integer in 1..{max_views} for {e.sampling} sampling")
  if e.stride <= 0:
    fields.fail("eval.stride", e.stride, "a positive integer")


def make_evaluator(config, graphdef, mesh, rows, workers=0):
  """params -> evaluate(...) over config.data's eval split, each video cut into the views config.eval
  describes (sources.EvalViews) by `workers` grain worker processes (0: this process); this process reads
  `rows` of each global batch of config.batch_size."""
  eval_step = make_eval_step(graphdef, data.label_heads(config), mesh)
  source, views_fn = sources.source(config, "eval"), sources.EvalViews(config)
  to_global = lambda batch: sharding.global_batch(mesh, batch, config.batch_size)
  return lambda params: evaluate(
      eval_step, params, pipeline.eval_dataset(source, global_batch=config.batch_size, views_fn=views_fn, rows=rows,
                                             workers=workers),
      to_global)


def final(results):
  """evaluate()'s results on the final parameters, the training run's result: each eval/NAME as final/NAME
  (final/top1, final/top5; with several label heads final/top1 is the action, also named final/action_top1,
  and final/verb_top1 a head's)."""
  out = {"final/" + name.split("/", 1)[1]: value for name, value in results.items()}
  if any(name.endswith("_top1") for name in results):  # several heads (EPIC): the action by its own name too
    out.update({f"final/action_{k}": out[f"final/{k}"] for k in ("top1", "top5") if f"final/{k}" in out})
  return out


def summary(results, *, prefix=True):
  """The results as one line: "eval/top1 0.5000 | ... | eval/videos 8 | eval/skipped 0" ("top1 0.5000 | ..."
  without the prefix)."""
  name = lambda k: k if prefix else k.split("/", 1)[1]
  return " | ".join(f"{name(k)} {v:.0f}" if k.endswith(("/videos", "/skipped")) else f"{name(k)} {v:.4f}"
                    for k, v in results.items())
