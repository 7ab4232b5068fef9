"""The backbone's blocks in order: block by block, or each run of alike blocks stored stacked and run as one
`jax.lax.scan`; under a remat policy either way.

A run is consecutive blocks with the same program (equal graphdefs: X-ViT's mixing blocks, or its blocks that
do not mix). With `model.scan_layers` the model stores each run as one module whose arrays have a leading
axis, one entry per block (`stacks/k/...`, block runs[k][j] at index j; parameter names and the conversion
to and from the per-block `blocks/i/...`: layouts.py), and the step scans over that stored state: the
compiled program holds one loop body per run and nothing per block, so its compile time hardly grows with
depth (BENCHMARKS.md, "Scanned layers"). The blocks are created one by one and then stacked, so a seed gives
the same numbers in both layouts. A block's drop-path rate and its dropout key are scanned inputs, so blocks
that differ only in their rate are one run, and the numbers equal those of the plain loop.
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


def runs(blocks):
  """Indices of consecutive blocks with equal graphdefs: [[0, 1, ...], [6, ...]]."""
  out = []
  for i, block in enumerate(blocks):
    if out and nnx.graphdef(block) == nnx.graphdef(blocks[out[-1][0]]):
      out[-1].append(i)
    else:
      out.append([i])
  return out


def stack(blocks):
  """One module of alike `blocks` (a run) whose every array is theirs stacked along a new leading axis."""
  states = [nnx.state(block) for block in blocks]
  return nnx.merge(nnx.graphdef(blocks[0]), jax.tree.map(lambda *leaves: jnp.stack(leaves), *states))


def run_blocks(blocks, x, *, rates, key=None, remat="none"):
  """x through `blocks` in order, block by block.

  rates: each block's drop-path rate; key: this step's dropout key when training with drop path (block i
  draws from fold_in(key, i), scanned or not), None: no drop path. remat: a REMAT_POLICIES name, applied to
  each block.
  """
  for i, block in enumerate(blocks):
    graphdef, state = nnx.split(block)
    x, _ = _layer(graphdef, key, remat, scanned=False)(x, (state, jnp.float32(rates[i]), jnp.int32(i)))
  return x


def run_stacks(stacks, block_runs, x, *, rates, key=None, remat="none"):
  """x through the blocks stored stacked: stacks[k] holds blocks block_runs[k] (stack), scanned over when the
  run has more than one; rates, key and remat as run_blocks."""
  for module, run in zip(stacks, block_runs):
    graphdef, state = nnx.split(module)
    inputs = (state, jnp.asarray([rates[i] for i in run], jnp.float32), jnp.asarray(run, jnp.int32))
    if len(run) == 1:
      x, _ = _layer(graphdef, key, remat, scanned=False)(x, jax.tree.map(lambda leaf: leaf[0], inputs))
    else:
      x, _ = jax.lax.scan(_layer(graphdef, key, remat, scanned=True), x, inputs)
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
