"""Storage formats side by side: `python -m xvit_jax.data.builders.storage_benchmark [--clips=3]` (numbers in
BENCHMARKS.md, "Input at accelerator speed").

Clips like Kinetics' after preparation (xvit_jax.data.natural_clips: 10 s, 30 fps, 340x256, a natural scene
under a moving camera, moving objects, sensor noise) stored as
  (a) h264 mp4 as stored format 1 prepares it (common.X264_OPTIONS: crf 23, veryfast, a keyframe every 16 frames),
      decoding every frame (what a whole-video reader does) or seeking;
  (b) the same h264 with a keyframe every 4 or 8 frames, decoding from the keyframe before each sampled
      frame (and on to the next sampled frame when it is at most a keyframe interval ahead);
  (c) JPEG frames (libjpeg-turbo, 4:2:0) at quality 75/85/90/95 through simplejpeg (stored format 2 is
      common.JPEG_QUALITY through it) and at 90 through PIL, decoding only the sampled frames.
The sampled frames are those of one Kinetics train clip (dense sampling, 16 frames at stride 16, a random
start each time). Per option: bytes per clip (and x 240k clips: Kinetics-400's disk cost), encoding seconds
per clip, sampled clips decoded per second on one core, mean absolute error of every frame against the source
(0-255). Every codec runs single-threaded; the process pins itself to one core (its first allowed one).
"""

import io
import os
import time

import av
import numpy as np
import simplejpeg
from absl import app, flags
from PIL import Image

from xvit_jax.data import natural_clips, video
from xvit_jax.data.builders import common

FRAMES, HEIGHT, WIDTH, RATE = 300, 256, 340, 30
NUM_FRAMES, STRIDE = 16, 16  # configs/k400.py's train clip
KINETICS_CLIPS = 240_000


def _open(data):
  container = av.open(io.BytesIO(data))
  stream = container.streams.video[0]
  stream.thread_type, stream.codec_context.thread_count = "NONE", 1
  return container, stream


def decode_h264(data):
  """Every frame, RGB uint8."""
  container, stream = _open(data)
  with container:
    return [f.to_ndarray(format="rgb24") for f in container.decode(stream)]


def decode_h264_sampled(data, indices, gop):
  """The frames at sorted `indices`: seek to the keyframe at or before each one (pts of frame i is i *
  the frame duration, as common.encode writes it), decode up to it, and keep decoding instead of seeking
  when the next index is at most `gop` frames ahead."""
  container, stream = _open(data)
  step = int(round(1 / (stream.average_rate * stream.time_base)))
  start, out, frames, position = stream.start_time or 0, [], None, None
  with container:
    for i in indices:
      target = start + int(i) * step
      if position is None or not position < target <= position + gop * step:
        container.seek(target, stream=stream, backward=True)
        frames = container.decode(stream)
      frame = next(f for f in frames if f.pts >= target)
      position = frame.pts
      out.append(frame.to_ndarray(format="rgb24"))
  return out


def encode_jpeg(clip, quality, library="simplejpeg"):
  """One JPEG per frame, 4:2:0, with simplejpeg (format 2's encoder) or PIL (both libjpeg-turbo)."""
  if library == "simplejpeg":
    return [simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=quality, colorspace="RGB",
                                    colorsubsampling="420") for f in clip]
  out = []
  for frame in clip:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    out.append(buffer.getvalue())
  return out


def decode_jpeg(images, library="simplejpeg"):
  if library == "simplejpeg":
    return [simplejpeg.decode_jpeg(data, colorspace="RGB") for data in images]
  return [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in images]


def _rate(fn, rng, seconds):
  """Calls of fn(indices) per second, each with a new train clip's frame indices, after one warm-up."""
  draw = lambda: video.dense_random_indices(FRAMES, NUM_FRAMES, STRIDE, rng)
  fn(draw())
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    fn(draw())
    count += 1
  return count / (time.perf_counter() - start)


def measure(clip, seconds=2.0, seed=0):
  """[{option, bytes, encode_s, sampled_clips_per_s, mean_abs_error}] for one clip (T, H, W, 3) uint8."""
  rng = np.random.default_rng(seed)
  error = lambda frames: float(np.abs(np.stack(frames).astype(np.float32) - clip).mean())
  rows = []

  def timed(encode):
    start = time.perf_counter()
    data = encode()
    return data, time.perf_counter() - start

  mp4, seconds_16 = timed(lambda: common.encode_h264(clip, rate=RATE, gop=16))
  whole = decode_h264(mp4)
  assert len(whole) == FRAMES
  rows.append(dict(option="h264 g16 (format 1), decode all", bytes=len(mp4), encode_s=seconds_16,
                   sampled_clips_per_s=_rate(lambda i: decode_h264(mp4), rng, seconds),
                   mean_abs_error=error(whole)))
  for gop in (16, 8, 4):
    data, encode_s = ((mp4, seconds_16) if gop == 16 else
                      timed(lambda g=gop: common.encode_h264(clip, rate=RATE, gop=g)))
    index = video.dense_random_indices(FRAMES, NUM_FRAMES, STRIDE, rng)
    sampled = decode_h264_sampled(data, index, gop)
    whole_gop = whole if gop == 16 else decode_h264(data)
    assert all(np.array_equal(a, whole_gop[k]) for a, k in zip(sampled, index)), "seeking decoded other frames"
    rows.append(dict(option=f"h264 g{gop}, seek to the sampled frames", bytes=len(data), encode_s=encode_s,
                     sampled_clips_per_s=_rate(lambda i, d=data, g=gop: decode_h264_sampled(d, i, g), rng, seconds),
                     mean_abs_error=error(whole_gop)))
  for quality, library in ((75, "simplejpeg"), (85, "simplejpeg"), (90, "simplejpeg"), (90, "PIL"),
                           (95, "simplejpeg")):
    images, encode_s = timed(lambda q=quality, lib=library: encode_jpeg(clip, q, lib))
    decode = lambda i, im=images, lib=library: decode_jpeg([im[k] for k in i], lib)
    name = f"{library}, format 2" if (quality, library) == (common.JPEG_QUALITY, "simplejpeg") else library
    rows.append(dict(option=f"JPEG q{quality} ({name}), decode the sampled frames", bytes=sum(map(len, images)),
                     encode_s=encode_s, sampled_clips_per_s=_rate(decode, rng, seconds),
                     mean_abs_error=error(decode_jpeg(images, library))))
  return rows


def table(rows_per_clip):
  """Markdown: each option's mean over the clips (rates: median), its size against today's h264."""
  options = [r["option"] for r in rows_per_clip[0]]
  mean = lambda key, k: float(np.mean([rows[k][key] for rows in rows_per_clip]))
  base = mean("bytes", 0)
  lines = ["| option | kB per clip | x h264 g16 | Kinetics-400 (240k clips) | encode s per clip | "
           "sampled clips/s (one core) | mean abs error |", "|---|---|---|---|---|---|---|"]
  for k, option in enumerate(options):
    size = mean("bytes", k)
    rate = float(np.median([rows[k]["sampled_clips_per_s"] for rows in rows_per_clip]))
    lines.append(f"| {option} | {size / 1e3:.0f} | {size / base:.1f} | {size * KINETICS_CLIPS / 1e9:.0f} GB | "
                 f"{mean('encode_s', k):.2f} | {rate:.1f} | {mean('mean_abs_error', k):.2f} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  rows = []
  for seed in range(flags.FLAGS.clips):
    clip = natural_clips.clip(seed, frames=FRAMES, height=HEIGHT, width=WIDTH, fps=RATE, noise=flags.FLAGS.noise)
    rows.append(measure(clip, flags.FLAGS.seconds, seed))
    print(f"clip {seed}: h264 g16 {rows[-1][0]['bytes'] * 8 / (FRAMES / RATE) / 1e3:.0f} kbit/s", flush=True)
  bitrate = np.mean([r[0]["bytes"] for r in rows]) * 8 / (FRAMES / RATE) / 1e3
  print(f"\n{len(rows)} natural clips of {FRAMES} frames {WIDTH}x{HEIGHT} at {RATE} fps (h264 crf 23: "
        f"{bitrate:.0f} kbit/s, sensor noise {flags.FLAGS.noise:g}), one core (cpu {min(os.sched_getaffinity(0))}), "
        f"PyAV {av.__version__}, Pillow {Image.__version__}, simplejpeg {simplejpeg.__version__}; sampled: a "
        f"Kinetics train clip ({NUM_FRAMES} frames, stride {STRIDE})\n")
  print(table(rows))


if __name__ == "__main__":
  flags.DEFINE_integer("clips", 3, "natural clips to measure (different seeds)", lower_bound=1)
  flags.DEFINE_float("seconds", 2.0, "seconds of decoding per rate")
  flags.DEFINE_float("noise", 2.0, "the clips' sensor noise (standard deviation, grey levels); JPEG's size follows it")
  app.run(main)
