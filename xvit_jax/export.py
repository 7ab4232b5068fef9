"""Export for deployment: one self-contained jax.export artifact (StableHLO) and its JSON model card.

The artifact is the serialized inference function, float32 clips (b, T, S, S, 3) in [-1, 1] -> float32
logits (b, num_classes), for any batch size b, with the weights baked in as constants: one file, no
xvit_jax, flax or checkpoint needed to run it, only jax:

    exported = jax.export.deserialize(open("model.jaxexport", "rb").read())
    logits = exported.call(clips)

Weights are stored in float32, or in bfloat16 to halve the file (widened back to float32 inside, so the
model computes as configured). The card, PATH + ".json", says how clips are made (frames, size, mean and
std, views), names the classes, and records the source checkpoint (step, eval metrics), the artifact's
sha256 and how its logits compare with the float32 model's.
"""

import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax import lax

from xvit_jax import checkpoints, config_lib, preprocess
from xvit_jax.data import label_heads
from xvit_jax.errors import UserError
from xvit_jax.metric_writer import read_records

FORMAT = "xvit_jax.export/1"
WEIGHT_DTYPES = ("float32", "bfloat16")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
MEAN, STD = preprocess.MEAN, preprocess.STD  # clip = (rgb / 255 - mean) / std: preprocess.normalize's


def card_path(path):
  return path + ".json"


def _floating(x):
  return jnp.issubdtype(x.dtype, jnp.floating)


def inference_function(model, weights_dtype="float32"):
  """jit'd float32 clips (B, T, S, S, 3) -> float32 logits (B, classes), `model`'s weights held as
  constants in `weights_dtype`."""
  graphdef, state = nnx.split(model)
  # device arrays, not numpy ones: jax folds a conversion of a numpy constant, which would store float32
  stored = jax.tree.map(lambda x: jnp.asarray(x, weights_dtype) if _floating(x) else jnp.asarray(x), state)

  def infer(clips):
    weights = jax.tree.map(lambda x: lax.convert_element_type(x, jnp.float32) if _floating(x) else x, stored)
    return nnx.merge(graphdef, weights)(clips)

  return jax.jit(infer)


def input_shape(config):
  m = config.model
  return (m.num_frames, m.image_size, m.image_size, 3)


def export(model, config, weights_dtype="float32", platforms=None):
  """The jax.export.Exported inference function of `model`, batch size symbolic; `platforms` (a subset
  of PLATFORMS) default to this machine's."""
  shape = jax.export.symbolic_shape("b, " + ", ".join(map(str, input_shape(config))))
  clips = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.export.export(inference_function(model, weights_dtype), platforms=platforms)(clips)


def check_clips(config, count):
  """`count` clips of the synthetic task's eval set, preprocessed as the model takes them."""
  from xvit_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  m = config.model
  source = synthetic.MovingObjects(count, num_frames=m.num_frames, image_size=m.image_size,
                                   num_classes=m.num_classes, object_size=config.data.object_size,
                                   speed=config.data.speed, seed=config.seed + 1_000_003)
  return np.asarray(preprocess.normalize(np.stack([source[i]["video"] for i in range(count)])))


def compare(exported, model, clips):
  """How the artifact's logits on `clips` differ from those of `model` with float32 weights."""
  ours = np.asarray(jax.jit(exported.call)(clips))
  reference = np.asarray(inference_function(model)(clips))
  diff = float(np.abs(ours - reference).max())
  return {"clips": len(clips), "max_abs_diff": diff, "relative_diff": diff / float(np.abs(reference).max()),
          "top1_agreement": float(np.mean(ours.argmax(-1) == reference.argmax(-1)))}


def checkpoint_metrics(checkpoint_dir, step):
  """The eval metrics of `step`: those saved with the checkpoint and its line of DIR/metrics.jsonl."""
  mngr = checkpoints.manager(checkpoint_dir, create=False)
  metrics = dict(mngr.metrics(step) or {})
  mngr.close()
  for record in read_records(checkpoint_dir):
    if record["step"] == step:
      metrics.update({k: v for k, v in record.items() if k.startswith("eval/")})
  return metrics


def model_card(config, exported, blob, *, names, checkpoint, step, metrics, weights_dtype, check, float32_bytes=None):
  """The JSON-able description of an artifact: what to feed it, what comes out, where it came from."""
  m, e = config.model, config.eval
  artifact = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "weights_dtype": weights_dtype,
              "compute_dtype": config.dtype, "platforms": list(exported.platforms), "jax": jax.__version__,
              "input": {"shape": ["b", *input_shape(config)], "dtype": "float32"},
              "output": {"shape": ["b", m.num_classes], "dtype": "float32", "values": "logits",
                         "heads": [list(head) for head in label_heads(config)[0]]}}
  if float32_bytes is not None:
    artifact["float32_bytes"] = float32_bytes
  preprocessing = {
      "frames": m.num_frames, "size": m.image_size, "mean": list(MEAN), "std": list(STD),
      "scale": "RGB / 255, then (x - mean) / std: values in [-1, 1]", "sampling": e.sampling, "stride": e.stride,
      "temporal_views": e.temporal_views, "spatial_crops": e.spatial_crops,
      "resize": "short side to size, bilinear without antialiasing, then 3 crops (left, centre, right; "
                "top, centre, bottom for portrait video) or the centre one",
      "fusion": "sum of the views' logits"}
  return {"format": FORMAT, "artifact": artifact, "preprocessing": preprocessing, "labels": list(names),
          "source": {"checkpoint": os.path.abspath(checkpoint), "step": step, "metrics": metrics},
          "check": check, "config": json.loads(config.to_json_best_effort())}


def _write_atomically(path, data):
  with open(path + ".partial", "wb") as f:
    f.write(data)
  os.replace(path + ".partial", path)  # never a half-written file under the final name


def write(path, blob, card):
  """The artifact at `path` and its card beside it."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  _write_atomically(path, bytes(blob))
  _write_atomically(card_path(path), (json.dumps(card, indent=1) + "\n").encode())


def read(path):
  """(Exported, card) of an artifact written by `write`; UserError if either is missing or they do not match."""
  if not os.path.isfile(path):
    raise UserError(f"artifact {path} does not exist")
  if not os.path.isfile(card_path(path)):
    raise UserError(f"no model card {card_path(path)} beside the artifact {path}")
  try:
    with open(card_path(path), encoding="utf-8") as f:
      card = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"cannot read the model card {card_path(path)}: {e}") from None
  if not isinstance(card, dict) or card.get("format") != FORMAT:
    raise UserError(f"{card_path(path)} is not an xvit_jax model card ({FORMAT})")
  with open(path, "rb") as f:
    blob = f.read()
  if hashlib.sha256(blob).hexdigest() != (card.get("artifact") or {}).get("sha256"):
    raise UserError(f"model card {card_path(path)} does not match {path}: it describes another artifact "
                    "(sha256 differs); keep each artifact with the card written with it")
  labels = card.get("labels")
  if not isinstance(labels, list) or not all(isinstance(name, str) for name in labels):
    raise UserError(f"model card {card_path(path)}: 'labels' must be a list of class names")
  try:
    exported = jax.export.deserialize(bytearray(blob))
  except Exception as e:  # noqa: BLE001 - whatever the deserializer finds wrong, the file is the user's to fix
    raise UserError(f"cannot read {path} as a jax.export artifact: {' '.join(str(e).split())}") from None
  return exported, card


def card_config(card, where):
  """The config a model card (already matched to its artifact by `read`) was written with, checked as a run's
  config is: a card is a file from elsewhere, so a value no run could use is one line naming it."""
  if not isinstance(card.get("config"), dict):
    raise UserError(f"model card {where} has no config")
  try:
    config = ml_collections.ConfigDict(card["config"])
    config_lib.check(config, num_devices=1)
  except UserError as e:
    raise UserError(f"model card {where}: {e}") from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise UserError(f"model card {where} has a config that cannot be used: {' '.join(str(e).split())}") from None
  if len(card["labels"]) != config.model.num_classes:
    raise UserError(f"model card {where} names {len(card['labels'])} classes for a model of "
                    f"{config.model.num_classes}")
  return config


def check_fits(exported, config, path):
  """UserError if the artifact at `path` does not take the clips, or give the classes, that `config` describes."""
  clips, logits = exported.in_avals[0].shape[1:], exported.out_avals[0].shape[1:]
  want_clips, want_logits = input_shape(config), (config.model.num_classes,)
  if tuple(clips) != want_clips or tuple(logits) != want_logits:
    raise UserError(f"artifact {path} is from another model: it takes clips (b, {', '.join(map(str, clips))}) and "
                    f"gives {logits[0]} classes; the config describes clips (b, {', '.join(map(str, want_clips))}) "
                    f"and {want_logits[0]} classes")


def require_tensorflow():
  try:
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise UserError("--saved-model needs TensorFlow (pip install tensorflow); the jax.export artifact "
                    "needs only jax") from None


def saved_model(model, config, directory, weights_dtype="float32", platforms=None):
  """A TensorFlow SavedModel of the same function (jax2tf) in the new `directory`: signature
  "serving_default", float32 "clips" (any batch size) -> logits. It is loaded back and run on a clip
  before it is put in place (where `platforms` include this machine's); returns the largest logit
  difference from jax on that clip, or None."""
  require_tensorflow()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  infer = inference_function(model, weights_dtype)
  module = tf.Module()
  module.serve = tf.function(jax2tf.convert(infer, polymorphic_shapes=["(b, ...)"], with_gradient=False,
                                            native_serialization_platforms=platforms), autograph=False,
                             input_signature=[tf.TensorSpec((None, *input_shape(config)), tf.float32, name="clips")])
  partial = os.path.normpath(directory) + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  tf.saved_model.save(module, partial, signatures={"serving_default": module.serve})
  diff = None
  if platforms is None or jax.export.default_export_platform() in platforms:
    clip = check_clips(config, 1)
    try:
      served = tf.saved_model.load(partial).signatures["serving_default"](clips=tf.constant(clip))
    except tf.errors.OpError as e:
      shutil.rmtree(partial)
      reason = [line.strip() for line in str(e).splitlines() if "error:" in line] or [str(e).splitlines()[0]]
      raise UserError(f"TensorFlow {tf.__version__} cannot run what jax {jax.__version__} wrote ({reason[-1]}): "
                      "it needs a TensorFlow release about as new as jax; the jax.export artifact is written") from None
    diff = float(np.abs(next(iter(served.values())).numpy() - np.asarray(infer(clip))).max())
  os.replace(partial, directory)
  return diff
