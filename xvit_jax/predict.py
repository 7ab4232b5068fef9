"""Predict the class of a video with a trained, imported or exported model.

    python -m xvit_jax.predict --config configs/official/k600_xvit_b16.py --checkpoint /tmp/k600 \\
        --video clip.mp4 [--top-k 5] [--logits-out logits.npy]
    python -m xvit_jax.predict --artifact k600.jaxexport --video long.mp4 --stride 2 \\
        [--jsonl-out windows.jsonl] [--timeline timeline.png]

A video file is decoded and cut into views exactly as evaluation does (config.eval: frame sampling,
short side resized to the crop size without antialiasing, 1 or 3 crops; pixels normalised to [-1, 1] on
the device by xvit_jax.preprocess, as in evaluation) and the views' logits are summed, as the official test
does. A `.npy` input is taken as already preprocessed: float32 (T, H, W, 3) or (B, T, H, W, 3) in [-1, 1],
one row of logits per clip.

--artifact runs a model exported by tools.export instead of a checkpoint (its card gives the config).
--stride slides over a long video instead: a window every STRIDE seconds (see `windows`), one JSON line
of top-k classes per window, on stdout or to --jsonl-out, and with --timeline a plot over time.

In Python: `model = predict.load(config, checkpoint_dir)`; `model(batch)` maps a float32 (B, T, H, W, 3)
batch in [-1, 1] to logits (B, num_classes), compiled once per input shape; `model(views, pixels=True)`
takes pixels in [0, 255] (as `video_views` gives them) and normalises them first.
"""

import contextlib
import itertools
import json
import os
import sys

import jax
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from xvit_jax import export, labels, preprocess, state
from xvit_jax.errors import UserError


def load(config, checkpoint_dir=None):
  """A callable (B, T, H, W, 3) float32 -> logits (B, num_classes) numpy (see `_checked`); parameters from
  the newest checkpoint in `checkpoint_dir`, or initialised from `config.seed` when it is None."""
  graphdef, params = nnx.split(state.inference_model(config, checkpoint_dir)[0])
  forward = jax.jit(lambda p, video, pixels: nnx.merge(graphdef, p)(_input(video, pixels)), static_argnums=2)
  return _checked(lambda batch, pixels: forward(params, batch, pixels), export.input_shape(config))


def load_artifact(path, config=None):
  """(callable as `load` gives, config, class names) of an artifact written by tools.export; the config is
  the card's unless `config` is given, which must then describe the same model."""
  exported, card = export.read(path)
  if config is None:
    config = export.card_config(card, export.card_path(path))
  export.check_fits(exported, config, path)
  forward = jax.jit(lambda video, pixels: exported.call(_input(video, pixels)), static_argnums=1)
  return _checked(forward, export.input_shape(config)), config, card["labels"]


def _input(video, pixels):
  """The model's input: `video` as it is, or with `pixels` normalised (preprocess.normalize), inside the jit."""
  return preprocess.normalize(video) if pixels else video


def _checked(forward, expected):
  """predict(batch, pixels=False): float32 clips (B, T, H, W, 3) in [-1, 1], or with pixels=True RGB pixels
  in [0, 255] normalised on the device -> logits (B, classes); UserError for a batch of another shape."""
  def predict(batch, pixels=False):
    batch = np.asarray(batch, np.float32)
    if batch.ndim != 5 or batch.shape[1:] != expected:
      raise UserError(f"input of shape {batch.shape} does not fit the model: it needs (B, {', '.join(map(str, expected))})")
    return np.asarray(forward(batch, bool(pixels)))

  return predict


def video_views(config, path):
  """(views, T, S, S, 3) float32 pixels in [0, 255] of a video file, as config.eval describes (evaluation's
  views, cut on the host: evaluation resizes them on the device, the same within float32 rounding)."""
  from xvit_jax.data import sources  # pylint: disable=import-outside-toplevel
  return sources.EvalViews(config).of_file(path)


def read_input(config, path):
  """The clips to classify: (B, T, H, W, 3) and whether they are views of one video (pixels, to be normalised
  and fused) rather than a preprocessed .npy (in [-1, 1])."""
  if path.endswith(".npy"):
    if not os.path.isfile(path):
      raise UserError(f"input {path} does not exist")
    try:  # mapped, not read: a header claiming more than the file holds fails here, before any allocation
      array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - an unreadable file is the user's to fix
      raise UserError(f"cannot read {path} as .npy: {' '.join(str(e).split())}") from None
    if array.dtype != np.float32 or array.ndim not in (4, 5):
      raise UserError(f"{path} holds {array.dtype} of shape {array.shape}; a preprocessed input must be float32 "
                      "(T, H, W, 3) or (B, T, H, W, 3) in [-1, 1]")
    return np.array(array[None] if array.ndim == 4 else array), False
  return video_views(config, path), True


def class_names(config):
  if config.data.label_names:
    return labels.names(config.data.label_names)
  return [f"class {i}" for i in range(config.model.num_classes)]


def run(config, checkpoint, path, top_k=5, logits_out=None, artifact=None):
  """Logits (B, num_classes) for the input at `path`; prints the top-k classes of every row. The model is
  the checkpoint's, or with `artifact` the exported one (`config` may then be None: the card's)."""
  if artifact:
    model, config, names = load_artifact(artifact, config)
  clips, fuse = read_input(config, path)
  if not artifact:
    model, names = load(config, checkpoint), class_names(config)
  logits = model(clips, pixels=fuse)
  if fuse:
    logits = logits.sum(axis=0, keepdims=True)  # the official DATA.ENSEMBLE_METHOD "sum"
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


def _stream(path):
  """Yields the frames per second of the first video stream, then its frames (RGB uint8), decoding as it goes."""
  import av  # pylint: disable=import-outside-toplevel
  from xvit_jax.data import video  # pylint: disable=import-outside-toplevel

  def fail(reason):
    return UserError(f"cannot decode video {path}: {' '.join(str(reason).split())}")

  try:
    with av.open(path, mode="r") as container:
      if not container.streams.video:
        raise fail("no video stream")
      stream = container.streams.video[0]
      video.check_stream(stream, fail)
      stream.thread_type = "AUTO"
      fps = float(stream.average_rate or stream.guessed_rate or 0)
      if fps <= 0:
        raise fail("no frame rate")
      yield fps
      for frame in container.decode(stream):
        if frame.width * frame.height > video.MAX_FRAME_PIXELS:
          raise fail(f"a frame of {frame.width}x{frame.height} pixels, over the limit of {video.MAX_FRAME_PIXELS:,}")
        yield frame.to_ndarray(format="rgb24")
  except UserError:
    raise
  except av.FFmpegError as e:
    raise fail(e.strerror or e) from None
  except (OSError, EOFError, ValueError) as e:  # raised by file access and numpy conversion
    raise fail(getattr(e, "strerror", None) or e) from None


def windows(config, path, stride):
  """Yields (start_s, end_s, clips) for windows starting every `stride` seconds over the whole video at
  `path`; clips: float32 pixels (spatial crops, T, S, S, 3), one temporal view.

  Window k starts at frame round(k * stride * fps). It spans num_frames * eval.stride frames with dense
  sampling (the span the model sees in a clip), `stride` seconds with segment sampling (windows tile the
  video), and its clip is cut as predict cuts the first view of a video of that length. Windows that
  would run past the end are left out, except that a video shorter than one window gives one window:
  the whole video. The video is decoded once, as it plays; only frames that open windows use are kept.
  """
  from xvit_jax.data import video  # pylint: disable=import-outside-toplevel
  if not stride > 0:
    raise UserError(f"--stride={stride} must be a positive number of seconds")
  m, e = config.model, config.eval

  def sample(n):  # frame indices of the clip in a window of n frames
    if e.sampling == "dense":
      return video.dense_indices(n, m.num_frames, e.stride, clip_index=0, num_clips=1)
    return video.segment_indices(n, m.num_frames, view=0)

  def clip(frames):
    crops = video.three_crops(np.stack(frames), m.image_size)
    return crops if e.spatial_crops == 3 else crops[1:2]

  frames = _stream(path)
  fps = next(frames)
  if stride * fps < 1:
    raise UserError(f"--stride={stride} is shorter than one frame of {path} ({fps:g} frames per second)")
  length = m.num_frames * e.stride if e.sampling == "dense" else round(stride * fps)
  wanted = set(sample(length).tolist())
  start = lambda k: round(k * stride * fps)
  kept, next_k, count = {}, 0, 0
  for i, frame in enumerate(frames):
    if i == 0:
      shape = frame.shape
    elif frame.shape != shape:
      raise UserError(f"cannot decode video {path}: frame size changes within the video")
    k = next_k  # the first open window that samples frame i, if any
    while start(k) <= i and i - start(k) not in wanted:
      k += 1
    if next_k == 0 or start(k) <= i:  # until the first window is out every frame is kept (a short video's)
      kept[i] = video.resize_short_side(frame[None], m.image_size)[0]
    while i >= video.MIN_FRAMES - 1 and start(next_k) + length - 1 <= i:
      first = start(next_k)
      yield first / fps, (first + length) / fps, clip([kept[first + j] for j in sample(length)])
      next_k += 1
      kept = {j: f for j, f in kept.items() if j >= start(next_k)}
    count = i + 1
  video.check_readable(count, path)
  if next_k == 0:  # shorter than one window: the whole video, sampled as predict samples it
    yield 0.0, count / fps, clip([kept[j] for j in sample(count)])


def run_windows(config, checkpoint, path, stride, top_k=5, *, artifact=None, jsonl_out=None, timeline=None,
                logits_out=None):
  """Slides the model over the video at `path` (see `windows`): one JSON line per window,
  {"start_s", "end_s", "top_k": [{"class", "index", "prob"}]}, to `jsonl_out` or stdout; the class
  probabilities over time plotted to the PNG `timeline`; the fused logits (windows, classes) to
  `logits_out`. Returns the logits."""
  if artifact:
    model, config, names = load_artifact(artifact, config)
  items = windows(config, path, stride)
  items = itertools.chain([next(items)], items)  # an unreadable video fails here, before the model is built
  if not artifact:
    model, names = load(config, checkpoint), class_names(config)
  times, all_logits, all_probs = [], [], []
  with open(jsonl_out, "w", encoding="utf-8") if jsonl_out else contextlib.nullcontext(sys.stdout) as out:
    for start_s, end_s, clips in items:
      logits = model(clips, pixels=True).sum(axis=0)  # the crops fused as predict fuses views
      probs = np.asarray(jax.nn.softmax(logits / len(clips)))
      top = [{"class": names[k], "index": int(k), "prob": round(float(probs[k]), 6)} for k in np.argsort(-probs)[:top_k]]
      print(json.dumps({"start_s": round(start_s, 3), "end_s": round(end_s, 3), "top_k": top}), file=out, flush=True)
      times.append((start_s, end_s))
      all_logits.append(logits)
      all_probs.append(probs)
  if jsonl_out:
    print(f"{path}: {len(times)} windows from {times[0][0]:.2f} s to {times[-1][1]:.2f} s, written to {jsonl_out}")
  if timeline:
    plot_timeline(timeline, times, np.stack(all_probs), names, top_k, path)
  if logits_out:
    np.save(logits_out, np.stack(all_logits))
  return np.stack(all_logits)


def plot_timeline(png, times, probs, names, top_k, title):
  """The probabilities (windows, classes) over time, one line per class that is in some window's top-k
  (the 10 most probable such classes), each point at its window's centre."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  in_top = set(np.argsort(-probs, axis=1)[:, :top_k].ravel().tolist())
  shown = [k for k in np.argsort(-probs.max(axis=0)) if k in in_top][:10]
  centres = [(start + end) / 2 for start, end in times]
  figure = Figure(figsize=(10, 4), layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.subplots()
  for k in shown:
    axes.plot(centres, probs[:, k], marker="o", markersize=3, label=names[k])
  axes.set(xlabel="time (s), window centres", ylabel="probability", ylim=(0, 1), title=os.path.basename(title))
  axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
  figure.savefig(png, dpi=100)


def _command_line():
  """Flags are defined here, not at import, so `from xvit_jax import predict` works beside other flag users."""
  from xvit_jax.tools import cli  # pylint: disable=import-outside-toplevel
  config = config_flags.DEFINE_config_file("config", None, "The model config (optional with --artifact: its card's).")
  checkpoint = flags.DEFINE_string("checkpoint", None, "xvit_jax checkpoint directory (its newest step).")
  artifact = flags.DEFINE_string("artifact", None, "Instead of --checkpoint: an artifact written by tools.export.")
  video = flags.DEFINE_string("video", None, "A video file (mp4, webm, avi, ...) or a preprocessed .npy.")
  top_k = flags.DEFINE_integer("top-k", 5, "How many classes to print.")
  logits_out = flags.DEFINE_string("logits-out", None, "Write the fused logits (B, num_classes) to this .npy.")
  stride = flags.DEFINE_float("stride", None, "Slide over the whole video: a window every STRIDE seconds, "
                              "one JSON line of top-k classes each.")
  jsonl_out = flags.DEFINE_string("jsonl-out", None, "With --stride: write the JSON lines here instead of stdout.")
  timeline = flags.DEFINE_string("timeline", None, "With --stride: plot the class probabilities over time to this PNG.")
  flags.mark_flags_as_required(["video"])

  def main():
    if (checkpoint.value is None) == (artifact.value is None):
      raise UserError("give either --checkpoint (with --config) or --artifact")
    if checkpoint.value is not None and config.value is None:
      raise UserError("--checkpoint needs --config")
    if stride.value is None:
      if jsonl_out.value or timeline.value:
        raise UserError("--jsonl-out and --timeline need --stride")
      run(config.value, checkpoint.value, video.value, top_k.value, logits_out.value, artifact.value)
      return
    if video.value.endswith(".npy"):
      raise UserError("--stride slides over a video file, not a preprocessed .npy")
    run_windows(config.value, checkpoint.value, video.value, stride.value, top_k.value, artifact=artifact.value,
                jsonl_out=jsonl_out.value, timeline=timeline.value, logits_out=logits_out.value)

  cli.run(main)


if __name__ == "__main__":
  _command_line()
