"""Storage formats compared: `python -m xvit_jax.data.builders.storage_benchmark` (figures in common.py).

A synthetic 10 s 320x240 clip at 30 fps (moving boxes over a gradient with mild noise) stored as
(a) the h264 mp4 of `common.encode` and (b) JPEG frames (PyAV's mjpeg, quality ~90). Per core: every
codec single-threaded; run it pinned to one core (`taskset -c 0 python -m ...`) for clean figures.
Decode rates: the whole clip to RGB, and 16 evenly spread frames (h264: seeking to each one's keyframe).
"""

import fractions
import io
import time

import av
import numpy as np

from xvit_jax.data.builders import common

FRAMES, HEIGHT, WIDTH, RATE = 300, 240, 320, 30


def synthetic_clip(seed=0):
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
  base = np.stack([x * 255 / WIDTH, y * 255 / HEIGHT, (x + y) * 255 / (WIDTH + HEIGHT)], -1)
  clip = np.empty((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
  for t in range(FRAMES):
    frame = base.copy()
    for k in range(5):
      cx, cy = (40 + 50 * k + 3 * t) % WIDTH, (30 + 40 * k + 2 * t * (k % 2 * 2 - 1)) % HEIGHT
      frame[max(0, cy - 20):cy + 20, max(0, cx - 25):cx + 25] = [50 * k, 200 - 30 * k, 100 + 20 * k]
    clip[t] = np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255)
  return clip


def _single_thread(stream):
  stream.thread_type = "NONE"
  stream.codec_context.thread_count = 1


def decode_h264(data, indices=None):
  """All frames, or the frames at `indices` by seeking (the last keyframe before each, then decoding)."""
  with av.open(io.BytesIO(data)) as container:
    stream = container.streams.video[0]
    _single_thread(stream)
    if indices is None:
      return [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    step = int(round(1 / (stream.average_rate * stream.time_base)))
    out = []
    for i in indices:
      target = (stream.start_time or 0) + int(i) * step
      container.seek(target, stream=stream, backward=True)
      out.append(next(f for f in container.decode(stream) if f.pts >= target).to_ndarray(format="rgb24"))
    return out


def encode_jpeg(clip, qscale=3):
  codec = av.CodecContext.create("mjpeg", "w")
  codec.width, codec.height, codec.pix_fmt, codec.time_base = WIDTH, HEIGHT, "yuvj420p", fractions.Fraction(1, RATE)
  codec.options = {"qmin": str(qscale), "qmax": str(qscale)}  # ~ libjpeg quality 90
  return [bytes(p) for f in clip for p in codec.encode(av.VideoFrame.from_ndarray(f, format="rgb24"))]


def decode_jpeg(images):
  codec = av.CodecContext.create("mjpeg", "r")
  codec.thread_count = 1
  return [f.to_ndarray(format="rgb24") for data in images for f in codec.decode(av.Packet(data))]


def _rate(fn, seconds=2.0):
  fn()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    fn()
    count += 1
  return count / (time.perf_counter() - start)


def main():
  clip = synthetic_clip()
  spread = np.linspace(0, FRAMES - 1, 16).astype(int)
  start = time.perf_counter()
  mp4 = common.encode(clip, rate=RATE)
  h264_encode = time.perf_counter() - start
  assert len(decode_h264(mp4)) == FRAMES
  start = time.perf_counter()
  jpegs = encode_jpeg(clip)
  jpeg_encode = time.perf_counter() - start
  error = lambda frames: np.abs(np.stack(frames).astype(np.float32) - clip).mean()
  print(f"synthetic clip {FRAMES}x{HEIGHT}x{WIDTH} at {RATE} fps, one core, PyAV {av.__version__}")
  print(f"h264 mp4 {common.X264_OPTIONS}: {len(mp4) / 1e3:.0f} kB, encode {h264_encode:.2f} s, "
        f"decode all {_rate(lambda: decode_h264(mp4)):.1f} clips/s, "
        f"16 frames {_rate(lambda: decode_h264(mp4, spread)):.1f} clips/s, "
        f"mean abs error {error(decode_h264(mp4)):.2f}")
  print(f"JPEG frames: {sum(map(len, jpegs)) / 1e3:.0f} kB, encode {jpeg_encode:.2f} s, "
        f"decode all {_rate(lambda: decode_jpeg(jpegs)):.1f} clips/s, "
        f"16 frames {_rate(lambda: decode_jpeg([jpegs[i] for i in spread])):.1f} clips/s, "
        f"mean abs error {error(decode_jpeg(jpegs)):.2f}")


if __name__ == "__main__":
  main()
