"""Evaluation: top-1 / top-5 accuracy and loss over every held-out clip (padding masked out)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def make_eval_step(graphdef):
  """jit'd (params, batch) -> summed {"loss", "top1", "top5", "count", "skipped"} over the batch's videos.

  batch["video"] is (B, views, T, H, W, 3): the views' logits are summed per video (the official fusion)."""

  @jax.jit
  def eval_step(params, batch):
    b, views = batch["video"].shape[:2]
    logits = nnx.merge(graphdef, params)(batch["video"].reshape(b * views, *batch["video"].shape[2:]))
    logits = logits.reshape(b, views, -1).sum(axis=1)
    labels, mask = batch["label"], batch["mask"]
    k = min(5, logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1]  # (B, k)
    hit = top == labels[:, None]
    return {
        "loss": jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask),
        "top1": jnp.sum(hit[:, 0] * mask),
        "top5": jnp.sum(hit.any(axis=1) * mask),
        "count": jnp.sum(mask),
        "skipped": jnp.sum(batch["bad"]),
    }

  return eval_step


def evaluate(eval_step, params, batches, to_global):
  """Runs `eval_step` over the numpy `batches` (one pass) -> {"eval/top1", "eval/top5", "eval/loss"} over
  the readable videos, and "eval/skipped": how many could not be read."""
  totals = None
  for batch in batches:
    sums = eval_step(params, to_global(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.tree.map(lambda x: float(np.asarray(x)), jax.device_get(totals))
  count = max(totals["count"], 1.0)
  results = {f"eval/{name}": totals[name] / count for name in ("top1", "top5", "loss")}
  return {**results, "eval/videos": totals["count"], "eval/skipped": totals["skipped"]}
