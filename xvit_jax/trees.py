"""Parameter trees as flat {"blocks/0/attn/qkv/kernel": leaf} dicts, the names errors and reports use."""

import jax


def path_name(path):
  """A jax key path -> "a/b/0/c" (dict keys and list indices; a Variable's `.value` is skipped)."""
  return "/".join(str(k.key) if isinstance(k, jax.tree_util.DictKey) else str(k.idx)
                  for k in path if isinstance(k, (jax.tree_util.DictKey, jax.tree_util.SequenceKey)))


def flatten(tree):
  return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
