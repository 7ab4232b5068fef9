"""layouts.py: parameter trees block by block (`blocks/i`) and stacked (`stacks/k`), converted by name; what a
checkpoint of another layout or another model is told."""

import numpy as np
import pytest

from conftest import tiny_config
from xvit_jax import checkpoints, layouts, trees
from xvit_jax.errors import UserError
from xvit_jax.models import abstract_params


def test_pieces_name_each_block_of_a_stack_after_the_stacks_before_it():
  shapes = {"stacks/0/mlp/fc1/bias": (1, 8), "stacks/1/mlp/fc1/bias": (3, 8), "norm/scale": (4,),
            "opt/0/mu/stacks/1/mlp/fc1/bias": (3, 8), "opt/0/mu/stacks/0/mlp/fc1/bias": (1, 8)}
  pieces = layouts.pieces(shapes)
  assert pieces["blocks/0/mlp/fc1/bias"] == ("stacks/0/mlp/fc1/bias", 0, (8,))
  assert pieces["blocks/3/mlp/fc1/bias"] == ("stacks/1/mlp/fc1/bias", 2, (8,))
  assert pieces["opt/0/mu/blocks/1/mlp/fc1/bias"] == ("opt/0/mu/stacks/1/mlp/fc1/bias", 0, (8,))
  assert pieces["norm/scale"] == ("norm/scale", None, (4,)) and len(pieces) == 9


def test_a_tree_converts_to_the_other_layout_and_back_exactly():
  """Runs [0] [1 2] [3 4] (X-ViT mixing in blocks 1 and 2), numpy trees, and into one run of 5 (spatial
  attention); older (C, 3C) qkv kernels block by block go into the stacked (C, 3, H, D) ones reshaped."""
  models = [tiny_config(num_layers=5, shift_layers="1-2", scan_layers=scan).model for scan in (False, True)]
  templates = [abstract_params(m) for m in models]
  assert [templates[1]["stacks"][k]["norm1"]["scale"].shape[0] for k in range(3)] == [1, 2, 2]
  rng = np.random.default_rng(0)
  per_block = {name: rng.normal(size=leaf.shape).astype(np.float32)
               for name, leaf in layouts.per_block(templates[0]).items()}
  stacked = layouts.like(templates[1], per_block)
  for template in templates:  # a tree read into its own layout is read as it is, stacked or not
    shapes = {name: leaf.shape for name, leaf in trees.flatten(template).items()}
    assert set(layouts.sources(shapes, shapes).values()) == {None}
  np.testing.assert_array_equal(stacked["stacks"][1]["mlp"]["fc2"]["kernel"][1], per_block["blocks/2/mlp/fc2/kernel"])
  back = layouts.per_block(stacked)
  assert sorted(back) == sorted(per_block)
  for name, value in per_block.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)
  one_run = abstract_params(tiny_config(num_layers=5, attention="spatial", scan_layers=True).model)  # [0 1 2 3 4]
  restacked = layouts.like(one_run, layouts.per_block(stacked))
  assert restacked["stacks"][0]["mlp"]["fc1"]["kernel"].shape == (5, 32, 64) and len(restacked["stacks"]) == 1
  np.testing.assert_array_equal(restacked["stacks"][0]["attn"]["proj"]["bias"], np.stack(
      [per_block[f"blocks/{i}/attn/proj/bias"] for i in range(5)]))
  older = {name: value.reshape(value.shape[0], -1) if name.endswith("qkv/kernel") else value
           for name, value in per_block.items()}
  assert older["blocks/4/attn/qkv/kernel"].shape == (32, 96)
  np.testing.assert_array_equal(layouts.like(templates[1], older)["stacks"][2]["attn"]["qkv"]["kernel"][1],
                                per_block["blocks/4/attn/qkv/kernel"])


def test_a_checkpoint_of_another_model_is_refused_naming_blocks_in_either_layout(tmp_path):
  """A 3-block checkpoint stored stacked, read for 4 blocks (stored either way), or with a wider MLP: one line naming
  the block's parameter."""
  written = abstract_params(tiny_config(num_layers=3, scan_layers=True).model)
  checkpoints.write_params(str(tmp_path), _zeros(written))
  mngr = checkpoints.manager(str(tmp_path), create=False)
  for scan in (False, True):
    deeper = _zeros(abstract_params(tiny_config(num_layers=4, scan_layers=scan).model))
    with pytest.raises(UserError, match=r"from another model config: missing parameters \['blocks/3/"):
      checkpoints.restore_params(mngr, 0, deeper)
    wider = _zeros(abstract_params(tiny_config(num_layers=3, mlp_dim=256, scan_layers=scan).model))
    with pytest.raises(UserError, match=r"parameter blocks/0/mlp/fc1/bias has shape \(64,\), the config needs "
                                        r"\(256,\)"):
      checkpoints.restore_params(mngr, 0, wider)
  same = checkpoints.restore_params(mngr, 0, _zeros(abstract_params(tiny_config(num_layers=3).model)))
  assert same["blocks"][2]["attn"]["qkv"]["kernel"].shape == (32, 3, 4, 8)
  mngr.close()


def _zeros(template):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), template)
