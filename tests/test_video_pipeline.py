"""Real encoded videos through the train and eval pipelines: decode, sample, augment, views, fusion."""

import io
import os
import subprocess
import sys

import av
import numpy as np
from array_record.python import array_record_module
from absl import flags
from flax import nnx

from conftest import mp4_bytes, tiny_config
from xvit_jax import evaluate, preprocess, sharding
from xvit_jax.data import label_heads, pipeline, sources, video
from xvit_jax.data.builders import common
from xvit_jax.models import create_model


def records():
  rng = np.random.default_rng(0)
  out = [{"video": mp4_bytes(rng.integers(0, 256, (12, 40, 56, 3), dtype=np.uint8)), "label": i % 3, "id": f"v{i}",
          "num_frames": 12} for i in range(5)]
  out.insert(2, {"video": b"\x00\x00\x00 this is not a video", "label": 1, "id": "broken", "num_frames": 12})
  return out


def two_frames():
  """Decodable, but fewer than the 3 frames a video needs: unreadable, as the official loaders have it."""
  frames = np.random.default_rng(1).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
  return {"video": mp4_bytes(frames), "label": 2, "id": "two_frames", "num_frames": 2}


def video_config():
  c = tiny_config(image_size=32, num_frames=4)
  c.data.name, c.data.sampling, c.data.stride = "kinetics400", "dense", 2
  c.augment.autoaugment, c.augment.short_side_range, c.augment.random_erasing = True, (36, 40), 0.5
  c.eval.sampling, c.eval.stride, c.eval.temporal_views, c.eval.spatial_crops = "dense", 2, 2, 3
  return c


def train_rows(source, clip_fn, batches, rows=None):
  """The first `batches` train batches (global batch 4, seed 0), this process's `rows` of each, as one batch."""
  ds = pipeline.train_dataset(source, global_batch=4, seed=0, clip_fn=clip_fn, rows=rows)
  got = [batch for _, batch in zip(range(batches), iter(ds))]
  return {key: np.concatenate([batch[key] for batch in got]) for key in got[0]}


def test_an_unreadable_record_is_replaced_by_the_next_readable_one_of_the_shuffled_order():
  """Its row takes the next record of the shuffled order with the row's own augmentation, so each epoch's
  rows equal those of a source where the broken record is that next one; no row shifts (two processes'
  halves make the same batches), and "bad" marks the row for train/bad_records."""
  cfg, source = video_config(), records()
  clip = sources.TrainClip(cfg)
  rows = train_rows(source, clip, 3)  # 12 rows: two epochs of the 6 records
  assert rows["video"].shape == (12, 4, 32, 32, 3) and rows["video"].dtype == np.uint8  # normalised on the device
  assert rows["erase"].shape == (12, 4) and rows["erase"].dtype == np.int32
  assert 0 < (rows["erase"][:, 2] > 0).sum() < 12  # some clips have a box (p = 0.5), some none (zeros)
  order = train_rows([{"n": i} for i in range(6)], lambda record, rng: {"n": np.int32(record["n"])}, 4)["n"]
  broken = [int(p) for p in np.flatnonzero(order == 2)[:2]]  # records()[2]: its position in epochs 0 and 1
  np.testing.assert_array_equal(rows["bad"], np.isin(np.arange(12), broken))
  for epoch, p in enumerate(broken):
    replaced = list(source)
    replaced[2] = source[order[p + 1]]
    expected = train_rows(replaced, clip, 3)
    epoch_rows = slice(6 * epoch, 6 * epoch + 6)
    for key in ("video", "label", "erase"):
      np.testing.assert_array_equal(rows[key][epoch_rows], expected[key][epoch_rows])
    assert not expected["bad"].any()
  halves = [train_rows(source, clip, 3, rows=half) for half in ((0, 2), (2, 4))]
  for key in ("video", "label", "bad", "erase"):
    np.testing.assert_array_equal(np.concatenate([halves[0][key].reshape(3, 2, *rows[key].shape[1:]),
                                                  halves[1][key].reshape(3, 2, *rows[key].shape[1:])], 1),
                                  rows[key].reshape(3, 4, *rows[key].shape[1:]))
  assert sources.TrainClip(cfg)(two_frames(), np.random.default_rng(0)) is None


def test_evaluation_fuses_views_per_video_and_counts_the_unreadable_ones():
  cfg, source = video_config(), records() + [two_frames()]
  views = sources.EvalViews(cfg)
  batches = list(pipeline.eval_dataset(source, global_batch=4, views_fn=views))
  # 2 temporal x 3 spatial views per video, each a uint8 window of the 256-short-side frames a crop reads
  assert batches[0]["video"].shape == (4, 6, 4, 260, 260, 3) and batches[0]["video"].dtype == np.uint8
  assert batches[0]["rows"].shape == batches[0]["cols"].shape == (4, 6, 32, 2)
  model = create_model(cfg.model)
  graphdef, params = nnx.split(model)
  mesh = sharding.make_mesh()
  results = evaluate.evaluate(evaluate.make_eval_step(graphdef), params, batches,
                              lambda b: sharding.global_batch(mesh, b))
  assert results["eval/videos"] == 5 and results["eval/skipped"] == 2  # the broken one and the 2-frame one
  # the pipeline's first video is views(source[0]) with its label: top-1 below is computed from the same views
  first = views(source[0])
  for key in first:
    np.testing.assert_array_equal(batches[0][key][0], first[key])
  assert batches[0]["label"][0] == source[0]["label"] and batches[0]["mask"][0] == 1
  # the fused prediction of a video is the sum of its views' logits, the views as predict cuts them on the host
  host_views = lambda r: preprocess.normalize(views.of_frames(sources.stored_frames(r)))
  expected_top1 = np.mean([np.argmax(np.asarray(model(host_views(r))).sum(0)) == r["label"]
                           for r in source if r["id"] not in ("broken", "two_frames")])
  assert abs(results["eval/top1"] - expected_top1) < 1e-6


def test_epic_style_verb_and_noun_heads():
  cfg = video_config()
  cfg.data.label_heads, cfg.model.num_classes = "verb:2,noun:3", 5
  source = [dict(r, verb=i % 2, noun=(i + 1) % 3) for i, r in enumerate(records())]
  batch = next(iter(pipeline.train_dataset(source, global_batch=4, seed=0, clip_fn=sources.TrainClip(cfg))))
  assert batch["label"].shape == (4, 2)
  views = sources.EvalViews(cfg)
  model = create_model(cfg.model)
  graphdef, params = nnx.split(model)
  mesh = sharding.make_mesh()
  results = evaluate.evaluate(evaluate.make_eval_step(graphdef, label_heads(cfg)), params,
                              list(pipeline.eval_dataset(source, global_batch=4, views_fn=views)),
                              lambda b: sharding.global_batch(mesh, b))
  fused = {r["id"]: np.asarray(model(preprocess.normalize(views.of_frames(sources.stored_frames(r))))).sum(0)
           for r in source if r["id"] != "broken"}
  good = [r for r in source if r["id"] != "broken"]
  verb = np.mean([np.argmax(fused[r["id"]][:2]) == r["verb"] for r in good])
  noun = np.mean([np.argmax(fused[r["id"]][2:]) == r["noun"] for r in good])
  action = np.mean([np.argmax(fused[r["id"]][:2]) == r["verb"] and np.argmax(fused[r["id"]][2:]) == r["noun"]
                    for r in good])
  assert abs(results["eval/verb_top1"] - verb) < 1e-6 and abs(results["eval/noun_top1"] - noun) < 1e-6
  assert abs(results["eval/top1"] - action) < 1e-6
  def joint_rank(r):  # rank of the true (verb, noun) among the 6 pairs by log p(verb) + log p(noun)
    logp = lambda x: x - np.log(np.exp(x - x.max()).sum()) - x.max()
    scores = (logp(fused[r["id"]][:2])[:, None] + logp(fused[r["id"]][2:])[None, :]).ravel()
    return int((scores > scores[r["verb"] * 3 + r["noun"]]).sum())
  assert abs(results["eval/top5"] - np.mean([joint_rank(r) < 5 for r in good])) < 1e-6
  assert results["eval/skipped"] == 1


def jpeg_and_lossless_mp4(frames, name):
  """The same video as a prepared record of today's format (JPEG frames) and of the 1.0.0 format (an mp4),
  the mp4 lossless (RGB h264 at qp 0) from the JPEGs' decoded frames: both hold the same pixels."""
  data, ends = common.encode(iter(frames))
  decoded = video.JpegFrames(data, ends, name)[np.arange(len(ends))]
  buffer = io.BytesIO()
  with av.open(buffer, "w", format="mp4") as container:
    stream = container.add_stream("libx264rgb", rate=25, options={"qp": "0"})
    stream.height, stream.width, stream.pix_fmt = decoded.shape[1], decoded.shape[2], "rgb24"
    for image in decoded:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(stream.encode())
  np.testing.assert_array_equal(video.decode(buffer.getvalue()), decoded)  # the premise: lossless
  new = {"frames": data, "frame_ends": ends, "label": 1, "id": name, "num_frames": len(ends)}
  old = {"video": buffer.getvalue(), "label": 1, "id": name, "num_frames": len(ends)}
  return new, old


def test_jpeg_frames_give_the_clips_and_views_of_decoding_the_whole_video():
  """Today's records decode only the sampled frames; the clips and views are those of the 1.0.0 path, which
  decodes every frame, bit for bit: Kinetics (dense, multi-scale crop, AutoAugment) and SSv2 (segments,
  short-side jitter, 2 x 3 views) alike."""
  frames = np.random.default_rng(3).integers(0, 256, (30, 40, 56, 3), dtype=np.uint8)
  new, old = jpeg_and_lossless_mp4(frames, "v0")
  kinetics, ssv2 = video_config(), video_config()
  ssv2.data.sampling, ssv2.augment.multiscale_crop, ssv2.augment.random_erasing = "segment", False, 0.5
  ssv2.eval.sampling, ssv2.eval.temporal_views = "segment", 2
  for cfg in (kinetics, ssv2):
    clip = sources.TrainClip(cfg)
    for seed in range(4):
      a, b = clip(new, np.random.default_rng(seed)), clip(old, np.random.default_rng(seed))
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    views = sources.EvalViews(cfg)
    for key, value in views(new).items():
      np.testing.assert_array_equal(value, views(old)[key])
  first_end = int(new["frame_ends"][0])
  damaged = dict(new, frames=new["frames"][:first_end] + b"\0" * (len(new["frames"]) - first_end))
  assert sources.TrainClip(kinetics)(damaged, np.random.default_rng(0)) is None  # frames 1.. are no JPEGs
  assert sources.EvalViews(kinetics)(damaged)["bad"] == 1


class ViewsWithPid(sources.EvalViews):
  """EvalViews that also say which process cut them."""

  def __call__(self, record):
    return {**super().__call__(record), "pid": np.int64(os.getpid())}

  def blank(self, bad=False):
    return {**super().blank(bad), "pid": np.int64(os.getpid())}


def test_evaluation_workers_make_the_same_batches_in_other_processes():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read its absl flags, as under main
  cfg, source = video_config(), records() + [two_frames()] + records()
  views = ViewsWithPid(cfg)
  alone = list(pipeline.eval_dataset(source, global_batch=4, views_fn=views))
  workers = list(pipeline.eval_dataset(source, global_batch=4, views_fn=views, workers=2))
  assert len(workers) == len(alone) == 4
  for a, b in zip(alone, workers):
    assert a.keys() == b.keys()
    for key in set(a) - {"pid"}:
      np.testing.assert_array_equal(a[key], b[key])
  assert {int(p) for a in alone for p in a["pid"]} == {os.getpid()}
  assert len({int(p) for b in workers for p in b["pid"]} - {os.getpid()}) == 2  # two workers, neither this one


FAULTS_OF_READING_RECORDS = """
import resource, sys
import numpy as np
from array_record.python import array_record_module
sys.path.insert(0, "tests")
from conftest import tiny_config
from xvit_jax.data import sources
from xvit_jax.data.builders import common

reader = array_record_module.ArrayRecordReader(sys.argv[1], "readahead_buffer_size:0")  # as tfds.data_source

def page_faults():  # minor page faults of reading every record 3 times
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(3):
    for i in range(reader.num_records()):
      reader.read([i])
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

fresh = page_faults()
data, ends = common.encode(iter(np.random.default_rng(0).integers(0, 256, (8, 40, 56, 3), dtype=np.uint8)))
record = {"frames": data, "frame_ends": ends, "label": 1, "id": "v0", "num_frames": len(ends)}
config = tiny_config(image_size=32, num_frames=4)
config.data.name = "kinetics400"
assert sources.TrainClip(config)(record, np.random.default_rng(0)) is not None
page_faults()  # the heap grows to hold the records once
print(fresh, page_faults())
"""


def test_a_data_worker_reuses_freed_memory_rather_than_faulting_in_fresh_pages(tmp_path):
  """A data worker (here: from the first clip it makes) keeps freed memory for the next record: glibc's
  default gives a big block fresh pages, which the kernel faults in one 4 KiB page at a time (75% of the
  time of reading a Kinetics record), counted here as the reading process's minor page faults."""
  path = str(tmp_path / "records.array_record")
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")  # as tfds writes a prepared dataset
  for i in range(6):  # records of ~4 MB (a Kinetics clip's is ~5 MB) that zstd compresses, as JPEG frames a bit
    writer.write(np.random.default_rng(i).integers(0, 64, (4 << 20) + i * 100_000, dtype=np.uint8).tobytes())
  writer.close()
  run = subprocess.run([sys.executable, "-c", FAULTS_OF_READING_RECORDS, path], capture_output=True, text=True,
                       timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert run.returncode == 0, run.stderr
  fresh, kept = map(int, run.stdout.split())
  assert fresh > 3 * 6 * (4 << 20) // 4096  # every page of every record read faulted in (the premise)
  assert kept < fresh / 20
