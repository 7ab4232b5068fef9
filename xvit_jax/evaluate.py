"""Evaluation: top-1 / top-5 accuracy and loss over every held-out clip (padding masked out)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def make_eval_step(graphdef):
  """jit'd (params, batch) -> summed {"loss", "top1", "top5", "count"} over the batch's real clips."""

  @jax.jit
  def eval_step(params, batch):
    logits = nnx.merge(graphdef, params)(batch["video"])
    labels, mask = batch["label"], batch["mask"]
    k = min(5, logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1]  # (B, k)
    hit = top == labels[:, None]
    return {
        "loss": jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask),
        "top1": jnp.sum(hit[:, 0] * mask),
        "top5": jnp.sum(hit.any(axis=1) * mask),
        "count": jnp.sum(mask),
    }

  return eval_step


def evaluate(eval_step, params, batches, to_global):
  """Runs `eval_step` over the numpy `batches` (one pass) -> {"eval/top1", "eval/top5", "eval/loss"}."""
  totals = None
  for batch in batches:
    sums = eval_step(params, to_global(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.tree.map(lambda x: float(np.asarray(x)), jax.device_get(totals))
  count = max(totals["count"], 1.0)
  return {f"eval/{name}": totals[name] / count for name in ("top1", "top5", "loss")}
