"""predict --stride: the model slid over a whole video, one JSON line per window, and a timeline plot."""

import json

import matplotlib.image
import numpy as np
import pytest

from conftest import DEMO_4_FRAMES, demo_config, export_tool, make_checkpoint, run_module
from conftest import write_video as write_mp4  # h264 at 25 frames per second
from xvit_jax import predict
from xvit_jax.data import synthetic, video

CONFIG = ["--config=configs/demo.py", *DEMO_4_FRAMES]
SPAN = 4 * 10  # frames in a dense window: num_frames * eval.stride, 1.6 s at 25 fps


def moving_object(num_frames, velocity, start=(20.0, 20.0)):
  """48x64 frames of the synthetic task's object drifting by `velocity` px per frame from `start`."""
  source = synthetic.MovingObjects(1, num_frames=num_frames, image_size=64, num_classes=4, object_size=12,
                                   speed=1.0, seed=0)
  return source.render(np.random.default_rng(1), np.array(start), np.array(velocity))[:, :48]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  """A 6 s video whose object moves right for 3 s and then back left, and a model checkpoint."""
  root = tmp_path_factory.mktemp("long")
  right = moving_object(75, (0.0, 2.0))
  write_mp4(root / "long.mp4", np.concatenate([right, moving_object(75, (0.0, -2.0), start=(20.0, 170.0))]))
  write_mp4(root / "short.mp4", right[:20])  # 0.8 s: shorter than one window
  make_checkpoint(root / "run", demo_config(), seed=3)
  return root


def fused_probs(model, frames, config):
  """What predict gives for a video of these frames: its first view, crops fused."""
  e, m = config.eval, config.model
  views = video.eval_views(frames, num_frames=m.num_frames, image_size=m.image_size, sampling=e.sampling,
                           stride=e.stride, temporal_views=1, spatial_crops=e.spatial_crops)
  logits = model(views, pixels=True).sum(0)
  return np.exp(logits / len(views)) / np.exp(logits / len(views)).sum()


def test_windows_every_second_as_json_lines_and_a_timeline(clip_dir, tmp_path):
  result = run_module("xvit_jax.predict", *CONFIG, f"--checkpoint={clip_dir / 'run'}", f"--video={clip_dir / 'long.mp4'}",
                      "--stride=1", "--top-k=2", f"--timeline={tmp_path / 'timeline.png'}",
                      f"--logits-out={tmp_path / 'logits.npy'}")
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [json.loads(line) for line in result.stdout.strip().splitlines()]  # stdout holds the JSON lines alone
  assert [row["start_s"] for row in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]  # 5.0 + 1.6 would run past 6.0
  assert [row["end_s"] for row in rows] == [1.6, 2.6, 3.6, 4.6, 5.6]
  for row in rows:
    assert [set(top) for top in row["top_k"]] == [{"class", "index", "prob"}] * 2
    assert row["top_k"][0]["prob"] >= row["top_k"][1]["prob"] > 0
    assert all(top["class"] == f"class {top['index']}" for top in row["top_k"])

  frames = video.decode(clip_dir / "long.mp4")
  model = predict.load(demo_config(), str(clip_dir / "run"))
  probs = [fused_probs(model, frames[25 * k:25 * k + SPAN], demo_config()) for k in range(5)]
  for row, p in zip(rows, probs):  # each window is exactly the trimmed video through predict
    assert [top["index"] for top in row["top_k"]] == list(np.argsort(-p)[:2])
    np.testing.assert_allclose([top["prob"] for top in row["top_k"]], np.sort(p)[::-1][:2], atol=2e-6)
  assert np.load(tmp_path / "logits.npy").shape == (5, 4)
  assert np.abs(probs[0] - probs[4]).max() > 1e-3  # before and after the turn the model sees different clips

  image = matplotlib.image.imread(tmp_path / "timeline.png")
  assert image.shape == (400, 1000, 4) and image[..., :3].std() > 0.05  # 10 x 4 inches at 100 dpi, not blank


@pytest.mark.slow  # 18 s; test_long_video's checkpoint windows and test_export's artifact parity cover its parts
def test_an_exported_artifact_writes_the_same_windows_to_a_file(clip_dir, tmp_path):
  artifact = tmp_path / "model.jaxexport"
  exported = export_tool(f"--checkpoint={clip_dir / 'run'}", f"--output={artifact}", "--check-clips=0")
  assert exported.returncode == 0, exported.stderr[-2000:]
  result = run_module("xvit_jax.predict", f"--artifact={artifact}", f"--video={clip_dir / 'long.mp4'}", "--stride=2.5",
                      "--top-k=4", f"--jsonl-out={tmp_path / 'windows.jsonl'}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == (f"{clip_dir / 'long.mp4'}: 2 windows from 0.00 s to 4.08 s, "
                                   f"written to {tmp_path / 'windows.jsonl'}")
  rows = [json.loads(line) for line in (tmp_path / "windows.jsonl").read_text().splitlines()]
  assert [(row["start_s"], row["end_s"]) for row in rows] == [(0.0, 1.6), (2.48, 4.08)]  # frame 62 of 25 per s
  frames = video.decode(clip_dir / "long.mp4")
  model = predict.load(demo_config(), str(clip_dir / "run"))
  for row, first in zip(rows, (0, 62)):  # 2.5 s * 25 fps = 62.5, rounded half to even; 125 + 40 > 150
    p = fused_probs(model, frames[first:first + SPAN], demo_config())
    assert sorted(top["index"] for top in row["top_k"]) == [0, 1, 2, 3]
    np.testing.assert_allclose([top["prob"] for top in row["top_k"]], p[[top["index"] for top in row["top_k"]]],
                               atol=2e-6)


def test_segment_sampling_tiles_the_video_and_a_short_video_is_one_window(clip_dir):
  config = demo_config("--config.eval.sampling=segment", "--config.eval.spatial_crops=1")
  windows = list(predict.windows(config, str(clip_dir / "long.mp4"), 1.5))
  frames = video.decode(clip_dir / "long.mp4")
  starts = [0, 38, 75, 112]  # round(k * 37.5), half to even; windows of round(37.5) = 38 frames; 112 + 38 = 150
  assert [(start, end) for start, end, _ in windows] == [(s / 25, (s + 38) / 25) for s in starts]
  for (_, _, clips), s in zip(windows, starts):
    assert clips.shape == (1, 4, 32, 32, 3)
    expected = video.eval_views(frames[s:s + 38], num_frames=4, image_size=32, sampling="segment",
                                temporal_views=1, spatial_crops=1)
    np.testing.assert_array_equal(clips, expected)
  (start, end, clips), = predict.windows(demo_config(), str(clip_dir / "short.mp4"), 1.0)
  assert (start, end) == (0.0, 0.8)
  expected = video.eval_views(video.decode(clip_dir / "short.mp4"), num_frames=4, image_size=32, sampling="dense",
                              stride=10, temporal_views=1, spatial_crops=3)
  np.testing.assert_array_equal(clips, expected)  # the whole video, its last frame repeated, as predict cuts it


def test_bad_long_video_inputs_are_one_line(clip_dir, tmp_path):
  (tmp_path / "notes.mp4").write_text("not a video")
  np.save(tmp_path / "clip.npy", np.zeros((4, 32, 32, 3), np.float32))
  video_file = f"--video={clip_dir / 'long.mp4'}"
  cases = [
      ([f"--video={tmp_path / 'notes.mp4'}", "--stride=1"], f"cannot decode video {tmp_path / 'notes.mp4'}"),
      ([video_file, "--stride=0"], "--stride=0.0 must be a positive number of seconds"),
      ([video_file, "--stride=-2"], "--stride=-2.0 must be a positive number of seconds"),
      ([video_file, "--stride=0.01"], "--stride=0.01 is shorter than one frame"),
      ([video_file, f"--timeline={tmp_path / 't.png'}"], "--jsonl-out and --timeline need --stride"),
      ([f"--video={tmp_path / 'clip.npy'}", "--stride=1"], "not a preprocessed .npy"),
  ]
  for args, message in cases:
    result = run_module("xvit_jax.predict", *CONFIG, f"--checkpoint={clip_dir / 'run'}", *args)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("error: ") and message in last, (args, result.stderr[-1000:])
  assert not (tmp_path / "t.png").exists()
