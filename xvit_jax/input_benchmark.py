"""Input throughput of one data worker: `python -m xvit_jax.benchmark --input_only [--config=configs/k400.py
--config.data.data_dir=DIR] [--out=R.json]`.

One worker is one core doing what a grain worker does per example: read a record of the prepared dataset
and turn it into model input, sources.TrainClip(config)(record, rng) for training (decode, sample, augment)
and sources.EvalViews(config)(record) for evaluation (decode, the official test views). The process pins
itself to one core (the first it may use, so `taskset -c N` chooses it), which also keeps FFmpeg's decoders
to one thread. After a warm-up pass, each pass takes `records` records the previous passes did not
(wrapping around the split) and the rates are the median over `passes` passes; nothing decoded is kept from
one record or pass to the next. Without --config it prepares a small Kinetics-400 dataset of natural clips
(xvit_jax.data.natural_clips: 10 s, 30 fps, 480x360 sources) with xvit_jax.data.prepare in a temporary
folder, so it measures whatever format `prepare` writes, and runs configs/k400.py on it.

`input_speed` is the full benchmark's input section: a worker on the synthetic task and on one encoded
natural clip, against the model's train step.
"""

import contextlib
import io
import math
import os
import statistics
import tempfile
import time

import numpy as np

from xvit_jax import config_lib
from xvit_jax.data import natural_clips, sources
from xvit_jax.data.builders import common

TARGETS = {"train_clips_per_s_per_worker": 40, "eval_videos_per_s_per_worker": 15}  # issue 15


def pin_to_one_core():
  """Pins this process to the first core it may run on; returns that core."""
  core = min(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {core})
  return core


def _rates(fn, source, records, passes):
  """Per pass, fn(record, i) over `records` records: (items per wall-clock second of each timed pass, items per
  second of this process's CPU time, count of fn returning None). Pass 0 (warm-up, untimed) takes records 0..,
  pass p records p * records.., mod len. On a core shared with other work the CPU-time rate is the worker's
  own speed, the wall-clock rate what it got."""
  wall, cpu, unreadable = [], [], 0
  for p in range(passes + 1):
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in range(records):
      k = (p * records + i) % len(source)
      unreadable += fn(source[k], k + p * len(source)) is None and p > 0
    if p > 0:
      wall.append(records / (time.perf_counter() - start))
      cpu.append(records / (time.process_time() - start_cpu))
  return wall, cpu, unreadable


def recipe(config):
  """What the measured input does, in words of the config."""
  d, m, a, e = config.data, config.model, config.augment, config.eval
  train = (f"{m.num_frames} frames, {d.sampling} sampling" + (f" stride {d.stride}" if d.sampling == "dense" else "")
           + f", {'multi-scale crop' if a.multiscale_crop else f'short side {tuple(a.short_side_range)} + crop'}"
           + f" to {m.image_size}" + (f", flip {a.flip}" if a.flip else "") + (", AutoAugment" if a.autoaugment else "")
           + (f", erasing {a.random_erasing}" if a.random_erasing else ""))
  evaluation = f"{e.temporal_views} x {e.spatial_crops} views, {e.sampling} sampling"
  return {"dataset": d.name, "train": train, "eval": evaluation}


def measure(config, *, records=8, passes=5):
  """One worker's train clips/s and eval videos/s on the prepared dataset of `config` (see the module
  docstring): the JSON-ready "input" record."""
  core = pin_to_one_core()
  train, evaluation = sources.source(config, "train"), sources.source(config, "eval")
  train_clip, eval_views = sources.TrainClip(config), sources.EvalViews(config)
  train_rates, train_cpu, train_bad = _rates(lambda r, k: train_clip(r, np.random.default_rng(k)), train, records,
                                             passes)
  eval_rates, eval_cpu, eval_bad = _rates(lambda r, k: eval_views(r)["mask"] or None, evaluation, records, passes)
  info = getattr(train, "dataset_info", None)
  return {"train_clips_per_s_per_worker": statistics.median(train_rates),
          "eval_videos_per_s_per_worker": statistics.median(eval_rates),
          "train_clips_per_cpu_s": statistics.median(train_cpu), "eval_videos_per_cpu_s": statistics.median(eval_cpu),
          "train_pass_rates": train_rates, "eval_pass_rates": eval_rates, "records_per_pass": records,
          "passes": passes, "warmup_passes": 1, "train_records": len(train), "eval_records": len(evaluation),
          "unreadable": train_bad + eval_bad, "recipe": recipe(config), "data_dir": config.data.data_dir,
          "dataset_version": info and str(info.version), "cpu": core, "targets": TARGETS}


def prepared_kinetics(folder, clips):
  """A Kinetics-400 dataset prepared by xvit_jax.data.prepare in `folder`/data from `clips` natural clips per
  split (train, validation); returns the data_dir. Its progress lines are not printed."""
  from xvit_jax.data import prepare  # pylint: disable=import-outside-toplevel
  manual, data_dir = os.path.join(folder, "manual"), os.path.join(folder, "data")
  natural_clips.kinetics_manual(manual, clips)
  with contextlib.redirect_stdout(io.StringIO()):
    prepare.prepare("kinetics400", manual_dir=manual, data_dir=data_dir)
  return data_dir


def run(config=None, *, records=None, passes=5):
  """measure() on config's dataset, or (config None) on configs/k400.py over a Kinetics-400 dataset of
  2 x `records` (default 4) natural clips per split that it prepares in a temporary folder."""
  if config is not None:
    config_lib.check(config, num_devices=None)
    return {**measure(config, records=records or 8, passes=passes), "self_prepared": False}
  records = records or 4
  config = config_lib.import_file("../configs/k400.py", next_to=__file__).get_config()
  with tempfile.TemporaryDirectory(prefix="xvit-input-") as tmp:
    config.data.data_dir = prepared_kinetics(tmp, 2 * records)
    return {**measure(config, records=records, passes=passes), "self_prepared": True}


def line(r):
  """The one line the command prints."""
  target = lambda key: f" (target {TARGETS[key]})"
  return (f"input, one worker (cpu {r['cpu']}), {r['recipe']['dataset']} {r['dataset_version'] or ''}: "
          f"train {r['train_clips_per_s_per_worker']:.1f} clips/s{target('train_clips_per_s_per_worker')}, "
          f"eval {r['eval_videos_per_s_per_worker']:.2f} videos/s{target('eval_videos_per_s_per_worker')}; "
          f"median of {r['passes']} passes of {r['records_per_pass']} records (per CPU second: train "
          f"{r['train_clips_per_cpu_s']:.1f}, eval {r['eval_videos_per_cpu_s']:.2f})")


def input_speed(synthetic_config, clips, model_clips_per_s):
  """The full benchmark's input section: clips/s per worker of (a) the synthetic task of `synthetic_config`
  and (b) a 300-frame 340x256 natural clip under the Kinetics recipe (dense 16x16, multi-scale crop, flip,
  AutoAugment) at its frames and image size, as a record of today's prepared format (JPEG frames) and of
  format 1.0.0 (h264), and the workers the model needs."""
  frames, size = synthetic_config.model.num_frames, synthetic_config.model.image_size
  kinetics = config_lib.import_file("../configs/k400.py", next_to=__file__).get_config(str(frames))
  kinetics.model.image_size = size
  natural = natural_clips.clip(0)  # 300 x 340x256
  data, ends = common.encode(iter(natural))
  jpeg = {"frames": data, "frame_ends": ends, "label": 0, "id": "clip", "num_frames": len(ends)}
  mp4 = {"video": common.encode_h264(natural), "label": 0, "id": "clip.mp4"}
  rates = {}
  for name, config, record in (("synthetic", synthetic_config,
                                sources.source(synthetic_config, "train").__getitem__),
                               ("jpeg_kinetics", kinetics, lambda i: jpeg), ("mp4_kinetics", kinetics, lambda i: mp4)):
    clip_fn = sources.TrainClip(config)  # what a worker runs per clip: read, decode, sample, augment
    clip_fn(record(0), np.random.default_rng(0))  # warm-up
    start = time.perf_counter()
    for i in range(1, clips + 1):
      clip_fn(record(i), np.random.default_rng(i))
    rates[name] = clips / (time.perf_counter() - start)
  need = lambda rate: model_clips_per_s and max(1, math.ceil(model_clips_per_s / rate))
  return {"frames": frames, "image_size": size, "model_train_clips_per_s": model_clips_per_s,
          "sources": [{"source": name, "clips_per_s": rate, "keeps_up": model_clips_per_s and need(rate) == 1,
                       "workers_needed": need(rate)} for name, rate in rates.items()]}
