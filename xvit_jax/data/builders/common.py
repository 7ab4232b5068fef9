"""Shared parts of the dataset builders: re-encoding, a resumable parallel map, the bad-example report.

numpy and PyAV only (no tfds, no TensorFlow): the encoding runs in worker processes.

Stored format: each clip (or EPIC action segment) is re-encoded to an h264 mp4 (yuv420p, crf 23,
preset veryfast, a keyframe every 16 frames, no scene-cut keyframes) with the short side resized to 256
(area filter, aspect kept, both sides even), or kept at its size when the short side is already 256 or
less: small videos are never upscaled (only an odd side loses one pixel, as yuv420p needs even sides).
All frames are kept, at the source frame rate, so `num_frames` is the source's frame count.

Why h264 and not JPEG frames: `python -m xvit_jax.data.builders.storage_benchmark` on a synthetic 10 s
320x240 30 fps clip (300 frames, kept at 320x240), per core (single-threaded codecs, `taskset -c 0`),
AMD EPYC VM, PyAV 19.0.2 (FFmpeg's h264 and mjpeg decoders), three runs:

  option                        size     decode all 300   decode 16 frames      encode   mean abs err
  h264 mp4 (this)               104 kB   21-22 clips/s    45 clips/s (seeking)  0.36 s   2.4
  JPEG frames (mjpeg qscale 3)  1.25 MB  21-22 clips/s    410 clips/s           0.13 s   2.3

At the same quality both decode a whole clip equally fast (what `xvit_jax.data.video.decode` and the
training pipeline do with the `video` bytes), and h264 is 12x smaller (x 260k Kinetics-400 clips: ~27 GB
instead of ~330 GB for content like this; real footage is larger in both) and one bytes value per record. JPEG frames would win (~9x) only
for a loader that decodes just the sampled frames, which needs a sequence-of-images record and a new
reader; a seeking h264 reader gets 2x (the keyframe every 16 frames allows it).
"""

import collections
import concurrent.futures
import io
import multiprocessing
import os
import time
from concurrent.futures.process import BrokenProcessPool

import av

from xvit_jax.data import video
from xvit_jax.errors import UserError

SHORT_SIDE = 256
X264_OPTIONS = {"crf": "23", "preset": "veryfast", "g": "16", "sc_threshold": "0", "threads": "1"}
DEFAULT_RATE = 30
DIED = "worker process died"


def target_size(height, width, short_side=SHORT_SIDE):
  """(height, width) as stored: short side `short_side` (aspect kept) if larger, never upscaled; even."""
  scale = min(1.0, short_side / min(height, width))
  return tuple(max(2, int(round(side * scale)) // 2 * 2) for side in (height, width))


def encode(frames, *, rate=DEFAULT_RATE):
  """h264 mp4 bytes of RGB uint8 frames (T, H, W, 3), resized to `target_size`."""
  height, width = target_size(*frames.shape[1:3])
  buffer = io.BytesIO()
  with av.open(buffer, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=rate, options=X264_OPTIONS)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for frame in frames:
      frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
      container.mux(stream.encode(frame.reformat(width, height, "yuv420p", interpolation="AREA")))
    container.mux(stream.encode())
  return buffer.getvalue()


def frame_rate(path):
  """The average frame rate of a video file's first video stream, or DEFAULT_RATE if unknown."""
  try:
    with av.open(os.fspath(path)) as container:
      rate = container.streams.video[0].average_rate
  except (av.FFmpegError, OSError, IndexError):
    return DEFAULT_RATE
  return rate if rate and 1 <= rate <= 1000 else DEFAULT_RATE


def load_video(path):
  """A whole source video as (frames, rate); UserError if it cannot be read."""
  return video.decode(path), frame_rate(path)


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
  """Worker: load(*args) -> (frames, rate), encode, write out_path. Returns (num_frames, None) or
  (None, reason): a UserError (unreadable input) or any other exception never stops the build."""
  try:
    frames, rate = load(*args)
    data = encode(frames, rate=rate)
  except UserError as e:
    return None, str(e)
  except Exception as e:  # pylint: disable=broad-except  # a codec or a bug: report, go on
    return None, f"{type(e).__name__}: {e}"
  with open(out_path + ".tmp", "wb") as f:
    f.write(data)
  os.replace(out_path + ".tmp", out_path)
  return len(frames), None


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
  """Finished results of one split, so a rerun skips them: `{id}.mp4` plus a log `done.tsv` with
  lines id<TAB>num_frames<TAB>reason (num_frames empty when it failed). Delete it to redo everything."""

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
    return os.path.join(self.path, key.replace(os.sep, "_") + ".mp4")

  def read(self, key):
    with open(self.video_path(key), "rb") as f:
      return f.read()

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
