"""The layouts a parameter tree comes in, and the one conversion between them, by leaf name (trees.flatten's
"blocks/0/attn/qkv/kernel").

  per block  `model.scan_layers=False`: block i's parameters under `blocks/i/`.
  stacked    `model.scan_layers=True`: each run of alike blocks (models/scan.py) is one module whose arrays have a
             leading axis of the run's length: `stacks/k/` holds the blocks after those of stacks 0..k-1, in order.
  older qkv  checkpoints written before the head-aligned qkv kernel (C, 3, H, D) and bias (3, H, D) hold them as
             (C, 3C) and (3C,): the same numbers in the same order (LEGACY).

A leaf is made of pieces, each one block's parameter (or a parameter outside the blocks) under its per-block
name; a tree converts to another layout by assembling each of the other's leaves from its pieces (stacked,
sliced, reshaped from the older qkv). Optimizer moments carry their parameter's name at the end of theirs
("opt_state/0/mu/stacks/0/mlp/fc1/kernel"), so they convert as their parameters do. Errors and reports name
pieces, so they read the same in either layout.
"""

import math
import re

import jax
import numpy as np

from xvit_jax import trees

_STACKED = re.compile(r"^(|.*/)stacks/(\d+)/(.+)$")
# Pieces that older checkpoints hold in fewer dimensions, the same numbers in the same order: reshaped.
LEGACY = (r"attn/qkv/(kernel|bias)$",)  # (C, 3C) and (3C,) before the head-aligned (C, 3, H, D), (3, H, D)


def is_stacked(name):
  """Whether the leaf `name` holds a run of blocks along its leading axis."""
  return _STACKED.match(name) is not None


def pieces(shapes):
  """{name: shape} -> {piece name: (name, index, shape)}: a stacked leaf's j-th block (index j), else the leaf
  itself (index None)."""
  lengths = {}
  for name, shape in shapes.items():
    if match := _STACKED.match(name):
      lengths[(match[1], int(match[2]))] = shape[0]
  first, following = {}, {}
  for prefix, k in sorted(lengths):
    first[(prefix, k)] = following.get(prefix, 0)
    following[prefix] = first[(prefix, k)] + lengths[(prefix, k)]
  out = {}
  for name, shape in shapes.items():
    if match := _STACKED.match(name):
      start = first[(match[1], int(match[2]))]
      for j in range(shape[0]):
        out[f"{match[1]}blocks/{start + j}/{match[3]}"] = (name, j, tuple(shape[1:]))
    else:
      out[name] = (name, None, tuple(shape))
  return out


def legacy(name, stored, wanted):
  """Whether a piece `name` stored in shape `stored` is an older layout of `wanted` (LEGACY)."""
  return (stored != wanted and len(stored) < len(wanted) and math.prod(stored) == math.prod(wanted)
          and any(re.search(pattern, name) for pattern in LEGACY))


def mismatch(stored, wanted):
  """(missing, unexpected, [(piece, stored shape, wanted shape)]): how `stored` ({name: shape}, any layout)
  cannot fill `wanted` ({name: shape}), by pieces; nothing: it can."""
  have, need = pieces(stored), pieces(wanted)
  missing, unexpected = sorted(set(need) - set(have)), sorted(set(have) - set(need))
  shapes = [(piece, have[piece][2], shape) for piece, (_, _, shape) in need.items()
            if piece in have and have[piece][2] != shape and not legacy(piece, have[piece][2], shape)]
  return missing, unexpected, shapes


def sources(stored, wanted):
  """{wanted name: [(stored name, index), ...]}: each of `wanted`'s leaves as the pieces of `stored` that make
  it, in order (index: the block in a stacked stored leaf, or None); None when they are the stored leaf as it
  is. Both are {name: shape}; every piece must be in `stored` (mismatch)."""
  have = pieces(stored)
  made = {}
  for piece, (name, j, shape) in pieces(wanted).items():
    made.setdefault(name, []).append((j, have[piece][:2], have[piece][2] != shape))
  out = {}
  for name, parts in made.items():
    parts.sort(key=lambda part: -1 if part[0] is None else part[0])
    made_of = [source for _, source, _ in parts]
    as_stored = made_of == [(name, j) for j, _, _ in parts] and stored.get(name) == tuple(wanted[name])
    out[name] = None if as_stored and not any(reshaped for _, _, reshaped in parts) else made_of
  return out


def assemble(parts, name, shape):
  """The leaf `name` of `shape` from its pieces' source arrays `parts` ([(array, index)], as sources gives them):
  each sliced (index) and reshaped (LEGACY), stacked when the leaf is."""
  piece_shape = shape[1:] if is_stacked(name) else shape
  arrays = [(array if j is None else array[j]).reshape(piece_shape) for array, j in parts]
  if is_stacked(name):
    return (np if all(isinstance(a, np.ndarray) for a in arrays) else jax.numpy).stack(arrays)
  return arrays[0]


def per_block(tree):
  """{piece name: array}: the leaves of `tree` (a nested dict of arrays or ShapeDtypeStructs, any layout) as
  their pieces, stacked leaves sliced."""
  out = {}
  leaves = trees.flatten(tree)
  for piece, (name, j, shape) in pieces({name: leaf.shape for name, leaf in leaves.items()}).items():
    leaf = leaves[name]
    if j is None:
      out[piece] = leaf
    else:
      out[piece] = jax.ShapeDtypeStruct(shape, leaf.dtype) if isinstance(leaf, jax.ShapeDtypeStruct) else leaf[j]
  return out


def like(template, flat):
  """`template` (a nested dict, any layout) with each leaf assembled from `flat` ({name: array} of any layout's
  names: per_block's pieces, or the template's own names)."""
  plan = sources({name: np.shape(value) for name, value in flat.items()},
                 {name: leaf.shape for name, leaf in trees.flatten(template).items()})

  def leaf_of(path, leaf):
    name = trees.path_name(path)
    parts = plan[name]
    return flat[name] if parts is None else assemble([(flat[n], j) for n, j in parts], name, tuple(leaf.shape))
  return jax.tree_util.tree_map_with_path(leaf_of, template)
