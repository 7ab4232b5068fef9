"""Import a released X-ViT PyTorch checkpoint (or its .npz) into an xvit_jax checkpoint directory.

    python -m xvit_jax.tools.import_official --checkpoint xvit_b16_16_k600.pth \\
        --config configs/official/k600_xvit_b16.py --output /tmp/k600

DIR then holds a weights-only checkpoint that `main` (training or --mode=evaluate with --workdir=DIR,
or --config.init_from=DIR), `predict` and `tools.export_official` load. Nothing is written on failure.
"""

import os


from xvit_jax import checkpoints, config_lib, models
from xvit_jax.convert import official, pretrained
from xvit_jax.errors import UserError
from xvit_jax.tools import cli

_CONFIG, _CHECKPOINT, _OUTPUT = cli.define_flags(
    config="Model config (e.g. configs/official/k600_xvit_b16.py).",
    checkpoint="The official .pth, or an .npz of its state dict.",
    output="Directory for the xvit_jax checkpoint (must not hold one).")


def import_checkpoint(config, checkpoint, output):
  """Returns the number of parameters written to `output`."""
  config_lib.check(config, num_devices=1)
  if os.path.isdir(os.path.join(output, "checkpoints")) and os.listdir(os.path.join(output, "checkpoints")):
    raise UserError(f"{output} already holds checkpoints; choose an empty --output")
  template = models.abstract_params(config.model)
  params = official.import_params(pretrained.read_weights(checkpoint), config.model, template)
  checkpoints.write_params(output, params)
  return sum(v.size for v in official.export_state_dict(params, config.model).values())


def main():
  count = import_checkpoint(_CONFIG.value, _CHECKPOINT.value, _OUTPUT.value)
  print(f"imported {count:,} parameters from {_CHECKPOINT.value} into {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main)
