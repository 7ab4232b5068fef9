"""Export an xvit_jax checkpoint as the state dict the official PyTorch X-ViT code loads.

    python -m xvit_jax.tools.export_official --checkpoint /tmp/k600 \\
        --config configs/official/k600_xvit_b16.py --output k600.pth   # or k600.npz

.pth needs torch (requirements-torch.txt) and is saved as {"model_state": state_dict}, as the official
`save_checkpoint` does; .npz holds the state dict's arrays under their key names.
"""

import os

import numpy as np

from xvit_jax import checkpoints, config_lib, models
from xvit_jax.convert import official
from xvit_jax.errors import UserError
from xvit_jax.tools import cli

_CONFIG, _CHECKPOINT, _OUTPUT = cli.define_flags(
    config="The model config the checkpoint was made with.",
    checkpoint="An xvit_jax checkpoint directory (its newest step).",
    output="The .pth or .npz file to write.")


def export_checkpoint(config, checkpoint, output):
  config_lib.check(config, num_devices=1)
  if not output.endswith((".pth", ".npz")):
    raise UserError(f"--output={output} must end in .pth or .npz")
  template = models.abstract_params(config.model)
  _, params = checkpoints.latest_params(checkpoint, template)
  state_dict = official.export_state_dict(params, config.model)
  partial = output + ".partial"
  if output.endswith(".npz"):
    with open(partial, "wb") as f:
      np.savez(f, **state_dict)
  else:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise UserError("writing .pth needs torch: pip install -r requirements-torch.txt (or write .npz)") from None
    torch.save({"model_state": {k: torch.from_numpy(v) for k, v in state_dict.items()}}, partial)
  os.replace(partial, output)  # never a half-written file under the final name
  return len(state_dict)


def main():
  count = export_checkpoint(_CONFIG.value, _CHECKPOINT.value, _OUTPUT.value)
  print(f"wrote {count} arrays to {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main)
