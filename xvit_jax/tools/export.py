"""Export a checkpoint for deployment: a self-contained jax.export artifact and its model card.

    python -m xvit_jax.tools.export --config configs/official/k600_xvit_b16.py --checkpoint /tmp/k600 \\
        --output k600.jaxexport [--weights-dtype bfloat16] [--platforms cpu,cuda] [--saved-model DIR]

Writes PATH (the serialized inference function, weights included, any batch size) and PATH.json (the
model card: config, preprocessing, labels, source step and eval metrics). The written artifact is run
on --check-clips clips of the synthetic task and compared with the float32 model; with bfloat16
weights the float32 artifact's size is reported too. --saved-model also writes a TensorFlow SavedModel
(needs TensorFlow). xvit_jax/export.py describes the artifact.
"""

import os

import jax
from absl import flags

from xvit_jax import config_lib, export, predict, state
from xvit_jax.errors import UserError
from xvit_jax.tools import cli

_CONFIG, _CHECKPOINT, _OUTPUT = cli.define_flags(
    config="The model config the checkpoint was made with.",
    checkpoint="An xvit_jax checkpoint directory (its newest step).",
    output="The artifact to write; its model card goes to OUTPUT.json.")
_WEIGHTS_DTYPE = flags.DEFINE_enum("weights-dtype", "float32", export.WEIGHT_DTYPES,
                                   "How the weights are stored in the artifact (bfloat16: half the size).")
_PLATFORMS = flags.DEFINE_string("platforms", "", "Comma-separated platforms the artifact runs on "
                                 f"({', '.join(export.PLATFORMS)}); empty: this machine's.")
_CHECK_CLIPS = flags.DEFINE_integer("check-clips", 8, "Synthetic clips to compare the artifact with the float32 "
                                    "model on (0: no check).")
_SAVED_MODEL = flags.DEFINE_string("saved-model", "", "Also write a TensorFlow SavedModel to this directory.")


def _megabytes(n):
  return f"{n / 1e6:.2f} MB"


def export_checkpoint(config, checkpoint, output, *, weights_dtype="float32", platforms=(), check_clips=8,
                      saved_model=""):
  """Writes the artifact and its card; returns the card."""
  config_lib.check(config, num_devices=1)
  if os.path.isdir(output):
    raise UserError(f"--output={output} is a directory; give the artifact's file name, such as model.jaxexport")
  unknown = sorted(set(platforms) - set(export.PLATFORMS))
  if unknown:
    raise UserError(f"--platforms: unknown platform(s) {', '.join(unknown)}; choose from {', '.join(export.PLATFORMS)}")
  if check_clips < 0:
    raise UserError(f"--check-clips={check_clips} must be >= 0")
  if saved_model:
    export.require_tensorflow()  # before the work, not after it
    if os.path.exists(saved_model):
      raise UserError(f"--saved-model={saved_model} exists; give a new directory")
  platforms = tuple(platforms) or None
  model, step = state.inference_model(config, checkpoint)
  exported = export.export(model, config, weights_dtype, platforms)
  blob = exported.serialize()
  float32_bytes = None
  if weights_dtype != "float32":
    float32_bytes = len(export.export(model, config, "float32", platforms).serialize())
  check, here = None, jax.export.default_export_platform()  # as jax.export names it: cuda, not gpu
  if check_clips and here in exported.platforms:
    check = export.compare(exported, model, export.check_clips(config, check_clips))
  card = export.model_card(config, exported, blob, names=predict.class_names(config), checkpoint=checkpoint,
                           step=step, metrics=export.checkpoint_metrics(checkpoint, step),
                           weights_dtype=weights_dtype, check=check, float32_bytes=float32_bytes)
  export.write(output, blob, card)

  print(f"exported step {step} of {checkpoint} to {output} ({_megabytes(len(blob))}, {weights_dtype} weights, "
        f"platforms {', '.join(exported.platforms)}); model card {export.card_path(output)}")
  if float32_bytes:
    print(f"size: {_megabytes(len(blob))} with {weights_dtype} weights, {_megabytes(float32_bytes)} with float32 "
          f"({len(blob) / float32_bytes:.1%})")
  if check:
    print(f"check on {check['clips']} synthetic clips against the float32 model: top-1 agreement "
          f"{check['top1_agreement']:.1%}, largest logit difference {check['max_abs_diff']:.3g} "
          f"({check['relative_diff']:.3%} of the largest logit)")
  elif check_clips:
    print(f"not checked: the artifact does not run on this machine's platform ({here})")
  if saved_model:
    diff = export.saved_model(model, config, saved_model, weights_dtype, platforms)
    checked = "" if diff is None else f"; run on a clip in TensorFlow, largest logit difference from jax {diff:.3g}"
    print(f"TensorFlow SavedModel in {saved_model}{checked}")
  return card


def main():
  platforms = [p.strip() for p in _PLATFORMS.value.split(",") if p.strip()]
  export_checkpoint(_CONFIG.value, _CHECKPOINT.value, _OUTPUT.value, weights_dtype=_WEIGHTS_DTYPE.value,
                    platforms=platforms, check_clips=_CHECK_CLIPS.value, saved_model=_SAVED_MODEL.value)


if __name__ == "__main__":
  cli.run(main)
