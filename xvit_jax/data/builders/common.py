"""Shared parts of the dataset builders: storing a video's frames, a resumable parallel map, the report.

numpy, Pillow and PyAV only (no tfds, no TensorFlow): the encoding runs in worker processes.

Stored format (2.0.0): every frame of a clip (or EPIC action segment), at the source frame rate, as a JPEG
image (libjpeg-turbo through simplejpeg, quality JPEG_QUALITY, 4:2:0 chroma), the files one after another in
one bytes value with the offset where each ends, so that a loader decodes only the frames it samples
(`xvit_jax.data.video.JpegFrames`). Frames are resized so the short side is 256 (FFmpeg's area filter, aspect
kept, both sides even), or kept at their size when the short side is already 256 or less: small videos are
never upscaled. `num_frames` is the source's frame count. Preparation streams: one source frame in memory at
a time (plus the JPEGs written so far), whatever the video's length or resolution.

Format 1.0.0 (up to 2026-12) stored one h264 mp4 per clip (`encode_h264`): 12x smaller, but a loader had to
decode every frame to use 16 of them. Datasets prepared in it are still read (the whole video decoded, as
then). `python -m xvit_jax.data.builders.storage_benchmark` measures the formats side by side; the numbers
are in BENCHMARKS.md ("Input at accelerator speed").
"""

import collections
import concurrent.futures
import io
import multiprocessing
import os
import time
from concurrent.futures.process import BrokenProcessPool

import av
import numpy as np
import simplejpeg

from xvit_jax.data import video
from xvit_jax.errors import UserError

SHORT_SIDE = 256
# the lowest quality measured whose frames are at least as close to the source as format 1's h264 (mean abs
# error 4.72 against 4.84 on natural clips: BENCHMARKS.md): fewer bytes to store, read and decode than 85-95
JPEG_QUALITY = 75
X264_OPTIONS = {"crf": "23", "preset": "veryfast", "g": "16", "sc_threshold": "0", "threads": "1"}
DEFAULT_RATE = 30
DIED = "worker process died"


def target_size(height, width, short_side=SHORT_SIDE):
  """(height, width) as stored: short side `short_side` (aspect kept) if larger, never upscaled; even."""
  scale = min(1.0, short_side / min(height, width))
  return tuple(max(2, int(round(side * scale)) // 2 * 2) for side in (height, width))


def resize_frame(frame, size):
  """RGB uint8 (H, W, 3) -> (size[0], size[1], 3) with FFmpeg's area filter (as frames are stored)."""
  if frame.shape[:2] == tuple(size):
    return frame
  picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
  return picture.to_ndarray(width=size[1], height=size[0], format="rgb24", interpolation="AREA")


def encode(frames, *, quality=JPEG_QUALITY):
  """(JPEG files one after another, int64 (N,) where each ends) of RGB uint8 frames (H, W, 3), an iterable
  read one frame at a time, each resized to `target_size`. UserError if there are none, or their size changes."""
  buffer, ends, size, first = io.BytesIO(), [], None, None
  for frame in frames:
    if first is None:
      first, size = frame.shape, target_size(*frame.shape[:2])
    elif frame.shape != first:
      raise UserError(f"frame size changes within the video [{first[:2]}, {frame.shape[:2]}]")
    buffer.write(simplejpeg.encode_jpeg(np.ascontiguousarray(resize_frame(frame, size)), quality=quality,
                                        colorspace="RGB", colorsubsampling="420"))
    ends.append(buffer.tell())
  if not ends:
    raise UserError("no frames")
  return buffer.getvalue(), np.array(ends, np.int64)


def encode_h264(frames, *, rate=DEFAULT_RATE, gop=16):
  """Format 1.0.0: h264 mp4 bytes of RGB uint8 frames (T, H, W, 3), resized to `target_size` (yuv420p,
  crf 23, a keyframe every `gop` frames: 16 as format 1 stored them). Kept for the benchmarks (the storage
  formats side by side, the full benchmark's input section) and for tests of reading old datasets."""
  height, width = target_size(*frames.shape[1:3])
  buffer = io.BytesIO()
  with av.open(buffer, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=rate, options={**X264_OPTIONS, "g": str(gop)})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for frame in frames:
      frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
      container.mux(stream.encode(frame.reformat(width, height, "yuv420p", interpolation="AREA")))
    container.mux(stream.encode())
  return buffer.getvalue()


def load_video(path):
  """The frames of a source video file, streamed (video.iter_frames); UserError if it cannot be read."""
  return video.iter_frames(path)


# ---------------------------------------------------------------------------------------- reports

class Report:
  """Skipped examples of one build: rows (id, split, reason, detail) and per-split totals."""

  def __init__(self, name):
    self.name, self.rows, self.totals = name, [], collections.Counter()

  def add(self, example_id, split, reason, detail=""):
    self.rows.append((example_id, split, reason, " ".join(str(detail).split())))

  def summary(self, split=None):
    rows = [r for r in self.rows if split in (None, r[1])]
    total = self.totals[split] if split else sum(self.totals.values())
    reasons = collections.Counter(r[2] for r in rows)
    where = f"{self.name} {split}" if split else self.name
    text = f"{where}: skipped {len(rows)} of {total} examples"
    return text + (": " + ", ".join(f"{n} {r}" for r, n in reasons.most_common()) if rows else "")

  def write(self, path):
    lines = ["id\tsplit\treason\tdetail"] + ["\t".join(row) for row in self.rows]
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------------ resumable parallel encode

def _encode_one(out_path, load, args):
  """Worker: load(*args) -> frames (an iterable), encode, write out_path (WorkDir.write). Returns
  (num_frames, None) or (None, reason): a UserError (unreadable input) or any other exception never stops
  the build."""
  try:
    data, ends = encode(load(*args))
  except UserError as e:
    return None, str(e)
  except Exception as e:  # pylint: disable=broad-except  # a codec or a bug: report, go on
    return None, f"{type(e).__name__}: {e}"
  WorkDir.write(out_path, data, ends)
  return len(ends), None


def _executor(workers):
  return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _pool_map(jobs, workers):
  """Yields (key, result) of _encode_one(*args) for each job (key, args) as they finish.

  A worker that dies (a crash, killed for memory) breaks the pool: the jobs that could have been running
  are then retried one at a time in a fresh process; one that kills it again gets (None, DIED ...).
  """
  todo = list(jobs)
  while todo:
    finished = set()
    pool = _executor(workers)
    try:
      futures = {pool.submit(_encode_one, *todo[i][1]): i for i in range(len(todo))}
      for future in concurrent.futures.as_completed(futures):
        result = future.result()
        finished.add(futures[future])
        yield todo[futures[future]][0], result
      return
    except BrokenProcessPool:
      rest = [job for i, job in enumerate(todo) if i not in finished]
      suspects, todo = rest[:2 * workers + 1], rest[2 * workers + 1:]  # running or queued when it broke
      for key, args in suspects:
        try:
          with _executor(1) as single:
            result = single.submit(_encode_one, *args).result()
        except BrokenProcessPool:
          result = None, DIED + " (crash, or killed for memory)"
        yield key, result
    finally:
      pool.shutdown(cancel_futures=True)  # also when the caller stops early: drop the queued jobs


class WorkDir:
  """Finished results of one split, so a rerun skips them: `{id}.frames` (the frames' end offsets as int64,
  then the JPEGs; see `write`) plus a log `done.tsv` with lines id<TAB>num_frames<TAB>reason (num_frames empty
  when it failed). Delete it to redo everything."""

  def __init__(self, path):
    self.path = os.fspath(path)
    os.makedirs(self.path, exist_ok=True)
    self.log_path = os.path.join(self.path, "done.tsv")
    self.done = {}
    if os.path.exists(self.log_path):
      with open(self.log_path, encoding="utf-8") as f:
        for line in f:
          key, num, reason = (line.rstrip("\n").split("\t") + ["", ""])[:3]
          if (num and os.path.exists(self.video_path(key))) or (not num and reason):
            self.done[key] = (int(num) if num else None, reason)

  def video_path(self, key):
    return os.path.join(self.path, key.replace(os.sep, "_") + ".frames")

  @staticmethod
  def write(path, data, ends):
    """One encoded video: int64 N, its N end offsets, then `data`; written whole or not at all."""
    with open(path + ".tmp", "wb") as f:
      f.write(np.array([len(ends)], "<i8").tobytes() + np.asarray(ends, "<i8").tobytes() + data)
    os.replace(path + ".tmp", path)

  def read(self, key):
    """(data, ends) as `encode` returned them."""
    with open(self.video_path(key), "rb") as f:
      raw = f.read()
    n = int(np.frombuffer(raw, "<i8", 1)[0])
    return raw[8 * (n + 1):], np.frombuffer(raw, "<i8", n, offset=8).astype(np.int64)

  def run(self, tasks, *, workers, name, log_every=None):
    """Encodes each (id, load, args) not done yet over `workers` processes with a progress line every
    `log_every` videos; returns {id: (num_frames, "") or (None, reason)} for all of `tasks`."""
    todo = [(key, (self.video_path(key), load, args)) for key, load, args in tasks if key not in self.done]
    cached, total = len(tasks) - len(todo), len(tasks)
    every = log_every or max(1, min(1000, total // 20))
    print(f"{name}: {total} videos, {cached} already done in {self.path}, {len(todo)} to encode"
          f" with {workers} processes", flush=True)
    start, counts = time.time(), collections.Counter()
    with open(self.log_path, "a", encoding="utf-8") as log:
      for key, (num, reason) in _pool_map(todo, workers):
        reason = " ".join((reason or "").split())
        self.done[key] = num, reason
        if not reason.startswith(DIED):  # a crash may be memory: retried by the next run
          log.write(f"{key}\t{'' if num is None else num}\t{reason}\n")
          log.flush()
        counts["ok" if num is not None else "failed"] += 1
        n = sum(counts.values())
        if n % every == 0 or n == len(todo):
          rate = n / max(time.time() - start, 1e-9)
          eta = (len(todo) - n) / rate if rate else 0
          print(f"{name}: {cached + n}/{total} videos ({counts['ok']} encoded, {counts['failed']} failed,"
                f" {cached} cached) {rate:.1f} videos/s, {eta / 60:.1f} min left", flush=True)
    return {key: self.done[key] for key, _, _ in tasks}
