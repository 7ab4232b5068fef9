"""Predict the class of a video with a trained or imported model.

    python -m xvit_jax.predict --config configs/official/k600_xvit_b16.py --checkpoint /tmp/k600 \\
        --video clip.mp4 [--top-k 5] [--logits-out logits.npy]

A video file is decoded and cut into views exactly as evaluation does (config.eval: frame sampling,
short side resized to the crop size without antialiasing, 1 or 3 crops, values in [-1, 1]) and the
views' logits are summed, as the official test does. A `.npy` input is taken as already preprocessed:
float32 (T, H, W, 3) or (B, T, H, W, 3), one row of logits per clip.

In Python: `model = predict.load(config, checkpoint_dir)`; `model(batch)` maps a float32 (B, T, H, W, 3)
batch to logits (B, num_classes), compiled once per input shape.
"""

import os

import jax
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from xvit_jax import checkpoints, config_lib, labels
from xvit_jax.errors import UserError

MIN_FRAMES = 3  # the official loaders skip videos with fewer frames


def load(config, checkpoint_dir=None):
  """A callable (B, T, H, W, 3) float32 -> logits (B, num_classes) numpy; parameters from the newest
  checkpoint in `checkpoint_dir`, or initialised from `config.seed` when it is None."""
  from xvit_jax.models import create_model  # pylint: disable=import-outside-toplevel
  config_lib.check(config, num_devices=1)
  model = create_model(config.model, dtype=config.dtype, seed=config.seed)
  if checkpoint_dir is not None:
    state = nnx.state(model, nnx.Param)
    _, params = checkpoints.latest_params(checkpoint_dir, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
  graphdef, params = nnx.split(model)
  forward = jax.jit(lambda p, video: nnx.merge(graphdef, p)(video))
  m = config.model
  expected = (m.num_frames, m.image_size, m.image_size, 3)

  def predict(batch):
    batch = np.asarray(batch, np.float32)
    if batch.ndim != 5 or batch.shape[1:] != expected:
      raise UserError(f"input of shape {batch.shape} does not fit the model: it needs (B, {', '.join(map(str, expected))})")
    return np.asarray(forward(params, batch))

  return predict


def video_views(config, path):
  """(views, T, S, S, 3) float32 of a video file, as config.eval describes."""
  from xvit_jax.data import video  # pylint: disable=import-outside-toplevel
  frames = video.decode(path)
  if len(frames) < MIN_FRAMES:
    raise UserError(f"video {path} has {len(frames)} frame(s); at least {MIN_FRAMES} are needed")
  e, m = config.eval, config.model
  return video.eval_views(frames, num_frames=m.num_frames, image_size=m.image_size, sampling=e.sampling,
                          stride=e.stride, temporal_views=e.temporal_views, spatial_crops=e.spatial_crops)


def read_input(config, path):
  """The clips to classify: (B, T, H, W, 3) and whether they are views of one video (to be fused)."""
  if path.endswith(".npy"):
    if not os.path.isfile(path):
      raise UserError(f"input {path} does not exist")
    try:
      array = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - an unreadable file is the user's to fix
      raise UserError(f"cannot read {path} as .npy: {e}") from None
    if array.ndim == 4:
      array = array[None]
    if array.dtype != np.float32:
      raise UserError(f"{path} holds {array.dtype}; a preprocessed input must be float32 in [-1, 1]")
    return array, False
  return video_views(config, path), True


def class_names(config):
  if config.data.label_names:
    return labels.names(config.data.label_names)
  return [f"class {i}" for i in range(config.model.num_classes)]


def run(config, checkpoint, path, top_k=5, logits_out=None):
  """Logits (B, num_classes) for the input at `path`; prints the top-k classes of every row."""
  clips, fuse = read_input(config, path)
  model = load(config, checkpoint)
  logits = model(clips)
  if fuse:
    logits = logits.sum(axis=0, keepdims=True)  # the official DATA.ENSEMBLE_METHOD "sum"
  names = class_names(config)
  # probabilities of the mean view (summed logits would sharpen the softmax with the number of views)
  probs = jax.nn.softmax(logits / (len(clips) if fuse else 1), axis=-1)
  for row, p in enumerate(np.asarray(probs)):
    header = f"{path}" + (f" [clip {row}]" if not fuse else f" ({len(clips)} views)")
    print(header)
    for k in np.argsort(-p)[:top_k]:
      print(f"  {p[k]:7.2%}  {names[k]}")
  if logits_out:
    np.save(logits_out, logits)
  return logits


def _command_line():
  """Flags are defined here, not at import, so `from xvit_jax import predict` works beside other flag users."""
  from xvit_jax.tools import cli  # pylint: disable=import-outside-toplevel
  config = config_flags.DEFINE_config_file("config", None, "The model config.")
  checkpoint = flags.DEFINE_string("checkpoint", None, "xvit_jax checkpoint directory (its newest step).")
  video = flags.DEFINE_string("video", None, "A video file (mp4, webm, avi, ...) or a preprocessed .npy.")
  top_k = flags.DEFINE_integer("top-k", 5, "How many classes to print.")
  logits_out = flags.DEFINE_string("logits-out", None, "Write the fused logits (B, num_classes) to this .npy.")
  flags.mark_flags_as_required(["config", "checkpoint", "video"])
  cli.run(lambda: run(config.value, checkpoint.value, video.value, top_k.value, logits_out.value))


if __name__ == "__main__":
  _command_line()
