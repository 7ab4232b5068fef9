"""Clips with natural-image statistics, and manual-download folders made of them, for the input benchmarks.

There is no real dataset on a development machine, and a flat synthetic texture (a gradient with boxes)
compresses and decodes unlike real footage: h264 spends its bits on fine texture, motion and noise. A
clip here is a camera moving over a natural scene: the photo shipped with matplotlib (grace_hopper.jpg)
mixed with a colour 1/f ("pink") texture, which has the 1/f^2 power spectrum of natural images, panning
with a slow zoom and a small shake (sub-pixel, resampled each frame), with a few textured objects moving
across it and sensor noise on every frame. `python -m xvit_jax.data.builders.storage_benchmark` prints
its h264 bitrate at the stored format's crf 23, to compare with real Kinetics.

`kinetics_manual` and `ssv2_manual` write the manual-download layouts that `xvit_jax.data.prepare`
reads (Kinetics: 10 s, 30 fps, 480x360 h264 sources; SSv2: 4 s, 12 fps, 426x240 VP9 .webm, as released):

    python -m xvit_jax.data.natural_clips --layout=kinetics400 --manual_dir=DIR --clips=24
"""

import io
import os

import numpy as np
from PIL import Image

CLASSES = ("dancing", "juggling", "running", "swimming")  # labels of the manual layouts (cycled)


def pink_noise(height, width, rng, exponent=1.0):
  """(height, width, 3) float32 with zero mean and unit standard deviation per channel: amplitude 1/f^exponent
  (power 1/f^2 for exponent 1, as natural images); the channels share most of their structure (luminance)."""
  fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
  amplitude = 1 / np.maximum(np.hypot(fy, fx), 1 / max(height, width)) ** exponent
  amplitude[0, 0] = 0
  luminance = rng.normal(size=(height, width))
  channels = [0.8 * luminance + 0.45 * rng.normal(size=(height, width)) for _ in range(3)]
  out = np.stack([np.fft.irfft2(np.fft.rfft2(c) * amplitude, s=(height, width)) for c in channels], -1)
  return ((out - out.mean((0, 1))) / out.std((0, 1))).astype(np.float32)


def photo():
  """matplotlib's sample photograph (Grace Hopper, 512x600 RGB) as uint8."""
  from matplotlib import cbook  # pylint: disable=import-outside-toplevel
  with cbook.get_sample_data("grace_hopper.jpg") as f:
    return np.asarray(Image.open(f).convert("RGB"))


def scene(height, width, rng):
  """A (height, width, 3) float32 scene in [0, 255]: the photo, randomly flipped and cropped to the scene's
  aspect and resized, under a random colour cast, mixed with a pink texture (different per `rng`)."""
  image = photo()[:, ::-1] if rng.random() < 0.5 else photo()
  h, w = image.shape[:2]
  scale = rng.uniform(0.6, 1.0) * min(h / height, w / width)
  ch, cw = int(height * scale), int(width * scale)
  top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
  base = np.asarray(Image.fromarray(image[top:top + ch, left:left + cw]).resize((width, height), Image.BICUBIC),
                    np.float32)
  base *= rng.uniform(0.8, 1.2, 3).astype(np.float32)  # colour cast: white balance, lighting
  texture = pink_noise(height, width, rng) * rng.uniform(30, 50) + rng.uniform(80, 170, 3).astype(np.float32)
  mix = rng.uniform(0.45, 0.7)
  return np.clip(mix * base + (1 - mix) * texture, 0, 255)


def _objects(rng, height, width, count, fps):
  """`count` moving textured ellipses: (patch float32 (h, w, 3), mask float32 (h, w, 1), start xy, velocity
  in pixels per frame), crossing the frame at 20 to 120 pixels per second."""
  out = []
  for _ in range(count):
    h, w = int(rng.uniform(0.15, 0.35) * height), int(rng.uniform(0.1, 0.3) * width)
    y, x = np.mgrid[0:h, 0:w]
    mask = (((y - h / 2) / (h / 2)) ** 2 + ((x - w / 2) / (w / 2)) ** 2 <= 1).astype(np.float32)[..., None]
    patch = np.clip(pink_noise(h, w, rng, exponent=1.2) * 35 + rng.uniform(30, 225, 3), 0, 255)
    speed, angle = rng.uniform(20, 120) / fps, rng.uniform(0, 2 * np.pi)
    start = np.array([rng.uniform(0, width - w), rng.uniform(0, height - h)])
    out.append((patch, mask, start, speed * np.array([np.cos(angle), np.sin(angle)])))
  return out


def clip(seed=0, *, frames=300, height=256, width=340, fps=30, noise=2.0, objects=3):
  """uint8 (frames, height, width, 3): a camera panning (20 to 60 pixels per second of the scene), zooming
  in by 10 to 30% over the clip and shaking by about a pixel, over a `scene` twice the frame's size, with
  `objects` moving ellipses and gaussian sensor noise of standard deviation `noise` (grey levels)."""
  rng = np.random.default_rng(seed)
  big = Image.fromarray(scene(2 * height, 2 * width, rng).astype(np.uint8))
  pan = rng.uniform(20, 60) / fps * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
  zoom = rng.uniform(1.1, 1.3)
  movers = _objects(rng, height, width, objects, fps)
  centre = np.array([width, height], np.float64)  # in the big scene, (x, y)
  out = np.empty((frames, height, width, 3), np.uint8)
  for t in range(frames):
    scale = 1.5 / zoom ** (t / max(frames - 1, 1))  # scene pixels per frame pixel
    shake = np.array([np.sin(t * 0.9), np.cos(t * 1.3)]) * 0.8
    cx, cy = np.clip(centre + pan * t + shake, [width * scale / 2, height * scale / 2],
                     [2 * width - width * scale / 2, 2 * height - height * scale / 2])
    box = (cx - width * scale / 2, cy - height * scale / 2, cx + width * scale / 2, cy + height * scale / 2)
    frame = np.asarray(big.resize((width, height), Image.BILINEAR, box=box), np.float32)
    for patch, mask, start, velocity in movers:
      x, y = (start + velocity * t) % [width, height]
      x, y = int(x), int(y)
      h, w = min(patch.shape[0], height - y), min(patch.shape[1], width - x)
      region = frame[y:y + h, x:x + w]
      region += mask[:h, :w] * (patch[:h, :w] - region)
    frame += rng.normal(0, noise, frame.shape).astype(np.float32)
    out[t] = np.clip(frame, 0, 255)
  return out


def write(path, frames, *, fps, codec="libx264", options=None):
  """Encodes uint8 frames (T, H, W, 3) into the file `path` (container from its extension)."""
  import av  # pylint: disable=import-outside-toplevel
  with av.open(os.fspath(path), "w") as container:
    stream = container.add_stream(codec, rate=fps, options=options or {})
    stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
    for image in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(stream.encode())


# a downloaded clip: a good-quality encode, as the sources are (YouTube's h264, SSv2's VP9)
KINETICS_SOURCE = dict(frames=300, height=360, width=480, fps=30, codec="libx264",
                       options={"crf": "18", "preset": "veryfast"})
SSV2_SOURCE = dict(frames=48, height=240, width=426, fps=12, codec="libvpx-vp9",
                   options={"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"})


def _write_source(path, seed, spec):
  spec = dict(spec)
  codec, options, fps = spec.pop("codec"), spec.pop("options"), spec["fps"]
  write(path, clip(seed, **spec), fps=fps, codec=codec, options=options)


def kinetics_manual(folder, clips, *, seed=0, splits=(("train", "train"), ("validate", "val")), spec=None):
  """The Kinetics manual layout (xvit_jax/data/builders/kinetics.py) with `clips` clips per split:
  annotations/{train,validate}.csv and {train,val}/<id>_000000_000010.mp4; clip i of a split is seed
  seed + 1000 * split + i. Returns `folder`."""
  import csv  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.join(folder, "annotations"), exist_ok=True)
  for s, (annotation, videos) in enumerate(splits):
    os.makedirs(os.path.join(folder, videos), exist_ok=True)
    rows = []
    for i in range(clips):
      youtube_id = f"{videos}{i:05d}"
      rows.append([CLASSES[i % len(CLASSES)], youtube_id, 0, 10, annotation])
      _write_source(os.path.join(folder, videos, f"{youtube_id}_000000_000010.mp4"), seed + 1000 * s + i,
                    spec or KINETICS_SOURCE)
    with open(os.path.join(folder, "annotations", f"{annotation}.csv"), "w", newline="", encoding="utf-8") as f:
      csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"], *rows])
  return folder


def ssv2_manual(folder, clips, *, seed=0, spec=None):
  """The Something-Something v2 manual layout (xvit_jax/data/builders/ssv2.py) with `clips` videos in train
  and in validation: labels.json, train.json, validation.json and videos/<id>.webm. Returns `folder`."""
  import json  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.join(folder, "videos"), exist_ok=True)
  templates = [f"{name.capitalize()} [something]" for name in CLASSES]
  with open(os.path.join(folder, "labels.json"), "w", encoding="utf-8") as f:
    json.dump({t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)}, f)
  for s, split in enumerate(("train", "validation")):
    entries = []
    for i in range(clips):
      video_id = str(100000 * (s + 1) + i)
      entries.append({"id": video_id, "template": templates[i % len(templates)], "label": "", "placeholders": []})
      _write_source(os.path.join(folder, "videos", f"{video_id}.webm"), seed + 1000 * s + i, spec or SSV2_SOURCE)
    with open(os.path.join(folder, f"{split}.json"), "w", encoding="utf-8") as f:
      json.dump(entries, f)
  return folder


LAYOUTS = {"kinetics400": kinetics_manual, "kinetics600": kinetics_manual, "something_something_v2": ssv2_manual}


def main():
  from absl import flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  LAYOUTS[f.layout](f.manual_dir, f.clips, seed=f.seed)
  print(f"wrote {f.clips} clips per split in the {f.layout} layout to {f.manual_dir}")


if __name__ == "__main__":
  from absl import flags as _flags
  from xvit_jax.tools import cli
  _flags.DEFINE_enum("layout", None, list(LAYOUTS), "the manual-download layout to write")
  _flags.DEFINE_string("manual_dir", None, "the folder to write (then: python -m xvit_jax.data.prepare ...)")
  _flags.DEFINE_integer("clips", 24, "clips per split", lower_bound=1)
  _flags.DEFINE_integer("seed", 0, "seed of the first clip")
  _flags.mark_flags_as_required(["layout", "manual_dir"])
  cli.run(main)
