"""The backbone's blocks in order, each run of alike blocks as one `jax.lax.scan`, under a remat policy.

Parameters stay stored block by block (`blocks/0`, `blocks/1`, ...: checkpoints, the official key maps and
the ImageNet-21k loader do not change). In the step, a run of consecutive blocks with the same program (equal
graphdefs: X-ViT's mixing blocks, or its blocks that do not mix) has its parameters stacked leaf-wise and
scanned over, so the compiled program holds one loop body per run (less to compile: BENCHMARKS.md, "Scanned
layers"). The stack costs one copy of the run's parameters (and of their gradients) per step, sharded like them,
and the per-block pieces it leaves around the loop (each block's slice of the stacked gradient, its optimizer
update) still make the TPU compile grow with depth; parameters stored stacked would not (measured there). A
block's drop-path rate and its dropout key are scanned inputs, so blocks that differ only in their rate are one
run, and the numbers equal those of the plain loop.
"""

import jax
import jax.numpy as jnp
from flax import nnx

# What a block keeps for the backward pass (`model.remat_policy`); the rest is recomputed there.
REMAT_POLICIES = {
    "none": None,  # everything: no recomputation
    "full": jax.checkpoint_policies.nothing_saveable,  # its input only: recompute the whole block
    # the outputs of its dense layers (qkv, proj, fc1, fc2): recompute the attention and the elementwise
    # parts; dots_saveable would also keep the attention scores, the activations that grow fastest
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def runs(blocks, scan=True):
  """Indices of consecutive blocks with equal graphdefs, [[0, 1, ...], [6, ...]]; each block alone if not `scan`."""
  out = []
  for i, block in enumerate(blocks):
    if scan and out and nnx.graphdef(block) == nnx.graphdef(blocks[out[-1][0]]):
      out[-1].append(i)
    else:
      out.append([i])
  return out


def run_blocks(blocks, x, *, rates, key=None, scan=True, remat="none"):
  """x through `blocks` in order: a run of alike blocks as one scan when `scan`, else block by block.

  rates: each block's drop-path rate; key: this step's dropout key when training with drop path (block i
  draws from fold_in(key, i), scanned or not), None: no drop path. remat: a REMAT_POLICIES name, applied to
  each block (the scan's body).
  """
  for run in runs(blocks, scan):
    graphdef = nnx.graphdef(blocks[run[0]])
    states = [nnx.state(blocks[i]) for i in run]
    layer = _layer(graphdef, key, remat, scanned=len(run) > 1)
    inputs = (jnp.asarray([rates[i] for i in run], jnp.float32), jnp.asarray(run, jnp.int32))
    if len(run) == 1:
      x, _ = layer(x, (states[0], inputs[0][0], inputs[1][0]))
    else:  # (run, ...) per parameter leaf: one copy of the run's parameters in the step
      stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
      x, _ = jax.lax.scan(layer, x, (stacked,) + inputs)
  return x


def _layer(graphdef, key, remat, *, scanned):
  """One block as a scan body, (x, (state, rate, index)) -> (x, None), under the remat policy `remat`."""

  def layer(x, inputs):
    state, rate, index = inputs
    block_key = None if key is None else jax.random.fold_in(key, index)
    return nnx.merge(graphdef, state)(x, droppath=rate, key=block_key), None

  if remat == "none":
    return layer
  # a scan's body is not merged with the backward pass, so it needs no barrier against XLA's CSE
  return jax.checkpoint(layer, policy=REMAT_POLICIES[remat], prevent_cse=not scanned)
