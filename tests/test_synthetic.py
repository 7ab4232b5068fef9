"""The built-in moving-object task and its grain pipelines."""

import numpy as np

from conftest import tiny_config
from xvit_jax import preprocess
from xvit_jax.data import pipeline, sources, synthetic


def source(**kwargs):
  args = dict(num_frames=8, image_size=32, num_classes=4, object_size=8, speed=4.0, seed=0)
  args.update(kwargs)
  return synthetic.MovingObjects(100, **args)


def test_examples_are_deterministic_in_seed_and_index():
  a, b, c = source()[7], source()[7], source(seed=1)[7]
  assert a["video"].shape == (8, 32, 32, 3) and a["video"].dtype == np.uint8
  np.testing.assert_array_equal(a["video"], b["video"])
  assert a["label"] == b["label"]
  assert not np.array_equal(a["video"], c["video"])
  assert sorted({int(source()[i]["label"]) for i in range(40)}) == [0, 1, 2, 3]


def test_frames_hold_no_class_information_only_their_order_does():
  # A clip of class k played backwards is exactly a clip of the opposite class: both classes show the
  # same frames, so no single-frame (or bag-of-frames) model can do better than chance.
  src = source()
  for label in range(4):
    start = np.array([3.0, 17.0])
    forward = src.render(np.random.default_rng(5), start, src.velocity[label])
    end = start + 7 * src.velocity[label]
    opposite = (label + 2) % 4
    np.testing.assert_allclose(src.velocity[opposite], -src.velocity[label], atol=1e-9)
    backward = src.render(np.random.default_rng(5), end, src.velocity[opposite])
    np.testing.assert_array_equal(forward[::-1], backward)


def test_the_object_moves_by_speed_pixels_per_frame_in_its_direction():
  src = source(speed=4.0)
  video = src.render(np.random.default_rng(0), np.array([0.0, 0.0]), src.velocity[0]).astype(int)  # class 0: +x
  np.testing.assert_array_equal(video[1, :8, 4:12], video[0, :8, 0:8])  # the object moved right by 4 px
  np.testing.assert_array_equal(video[2, :8, 8:16], video[0, :8, 0:8])
  assert not np.array_equal(video[1, :8, 0:8], video[0, :8, 0:8])


def test_train_pipeline_batches_are_uint8_pixels_and_reproducible():
  cfg = tiny_config()
  src = synthetic.from_config(cfg, "train")
  clip = sources.TrainClip(cfg)
  first = next(iter(pipeline.train_dataset(src, global_batch=4, seed=3, clip_fn=clip)))
  again = next(iter(pipeline.train_dataset(src, global_batch=4, seed=3, clip_fn=clip)))
  other = next(iter(pipeline.train_dataset(src, global_batch=4, seed=4, clip_fn=clip)))
  assert first["video"].shape == (4, 4, 16, 16, 3) and first["video"].dtype == np.uint8  # normalised on the device
  assert set(first) == {"video", "label", "bad"}  # no erasing box, no mixup draws: none configured
  np.testing.assert_array_equal(first["video"], again["video"])
  assert not np.array_equal(first["video"], other["video"])


def test_eval_pipeline_covers_every_clip_once_and_masks_the_padding():
  cfg = tiny_config()
  src = synthetic.from_config(cfg, "eval")  # 8 clips
  batches = list(pipeline.eval_dataset(src, global_batch=3, views_fn=sources.EvalViews(cfg)))
  assert batches[0]["video"].shape == (3, 1, 4, 16, 16, 3)  # (clips, views, T, H, W, 3)
  assert batches[0]["video"].dtype == np.uint8  # pixels, the clip as it is, its own window
  np.testing.assert_array_equal(batches[0]["video"][1, 0], src[1]["video"])
  # the device's resize of that window with identity taps gives the clip back, normalised: bit for bit
  np.testing.assert_array_equal(np.asarray(preprocess.eval_views(batches[0]))[1],
                                np.asarray(preprocess.normalize(src[1]["video"])))
  assert [len(b["label"]) for b in batches] == [3, 3, 3]
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 8 + [0])
  labels = np.concatenate([b["label"] for b in batches])[:8]
  np.testing.assert_array_equal(labels, [src[i]["label"] for i in range(8)])
  assert src.seed != synthetic.from_config(cfg, "train").seed
