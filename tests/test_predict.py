"""xvit_jax.predict on real encoded videos, on .npy inputs, and from Python."""

import re

import numpy as np
import pytest

from conftest import OFFICIAL_SMALL, import_official, official_small_config, run_module, write_video
from official_numpy import official_forward, random_official_state_dict
from xvit_jax import predict
from xvit_jax.data import video
from xvit_jax.errors import UserError


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """A small official-layout model imported as tools.import_official does, its state dict, a video."""
  root = tmp_path_factory.mktemp("predict")
  sd = random_official_state_dict(num_classes=5, hidden=32, depth=2, heads=4, patch=8, image_size=32, seed=9)
  np.savez(root / "official.npz", **sd)
  import_official(official_small_config(), root / "official.npz", root / "ckpt")
  rng = np.random.default_rng(0)
  frames = np.repeat(np.repeat(rng.integers(0, 256, (40, 12, 16, 3), dtype=np.uint8), 4, axis=1), 4, axis=2)
  write_video(root / "clip.mp4", frames)  # 40 frames of 48x64
  return root, sd


def run_predict(*args):
  return run_module("xvit_jax.predict", "--config=configs/official/k600_xvit_b16.py", *OFFICIAL_SMALL, *args)


def test_a_video_file_gives_the_official_models_summed_view_logits(imported):
  root, sd = imported
  result = run_predict(f"--checkpoint={root / 'ckpt'}", f"--video={root / 'clip.mp4'}", "--top-k=3",
                       f"--logits-out={root / 'logits.npy'}")
  assert result.returncode == 0, result.stderr[-2000:]
  logits = np.load(root / "logits.npy")
  assert logits.shape == (1, 5)
  # the official views, cut in the official order (normalise, then resize the floats: predict resizes pixels and
  # normalises on the device)
  frames = video.decode(root / "clip.mp4")
  normalised = (frames[video.dense_indices(len(frames), 16, 16, clip_index=0, num_clips=1)].astype(np.float32)
                / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
  views = video.three_crops(video.resize_short_side(normalised, 32), 32)
  assert views.shape == (3, 16, 32, 32, 3)
  official = official_forward(sd, views.transpose(0, 4, 1, 2, 3), num_segments=8, shift_div=8, heads=4).sum(0)
  assert np.abs(logits[0] - official).max() <= 1e-4 * np.abs(official).max()
  before = predict.load(official_small_config(), str(root / "ckpt"))(views).sum(0)  # the same model on those views
  assert np.abs(logits[0] - before).max() <= 1e-5 * np.abs(before).max()  # within float32 rounding
  lines = result.stdout.strip().splitlines()
  assert lines[0].endswith("clip.mp4 (3 views)") and len(lines) == 4
  best = int(np.argmax(official))
  assert lines[1].strip().endswith(f"class {best}")


def test_npy_batches_and_the_python_api(imported, tmp_path):
  root, _ = imported
  batch = np.random.default_rng(1).uniform(-1, 1, (2, 16, 32, 32, 3)).astype(np.float32)
  np.save(tmp_path / "batch.npy", batch)
  result = run_predict(f"--checkpoint={root / 'ckpt'}", f"--video={tmp_path / 'batch.npy'}",
                       f"--logits-out={tmp_path / 'out.npy'}")
  assert result.returncode == 0, result.stderr[-2000:]
  model = predict.load(official_small_config(), str(root / "ckpt"))
  np.testing.assert_allclose(np.load(tmp_path / "out.npy"), model(batch), rtol=1e-5, atol=1e-5)
  assert model(batch[:1]).shape == (1, 5)
  fresh = predict.load(official_small_config(), None)  # initialised from config.seed
  assert not np.allclose(fresh(batch), model(batch))


def test_bad_inputs_give_one_line(imported, tmp_path):
  root, _ = imported
  (tmp_path / "notes.mp4").write_text("not a video")
  write_video(tmp_path / "short.mp4", np.zeros((2, 48, 64, 3), np.uint8))
  np.save(tmp_path / "wrong.npy", np.zeros((16, 24, 24, 3), np.float32))
  missing = run_predict(f"--checkpoint={root / 'ckpt'}", f"--video={tmp_path / 'missing.mp4'}")  # the command
  assert missing.returncode == 2, missing.stderr[-1000:]
  assert missing.stderr.strip().splitlines()[-1].startswith(f"error: cannot decode video {tmp_path / 'missing.mp4'}")
  cases = {  # the same error from Python
      str(tmp_path / "notes.mp4"): "cannot decode video",
      str(tmp_path / "short.mp4"): "has 2 frame(s); at least 3 are needed",
      str(tmp_path / "wrong.npy"): "input of shape (1, 16, 24, 24, 3) does not fit the model: it needs (B, 16, 32, 32, 3)",
  }
  for path, message in cases.items():
    with pytest.raises(UserError, match=re.escape(message)):
      predict.run(official_small_config(), str(root / "ckpt"), path)
  with pytest.raises(UserError, match="no checkpoint in"):
    predict.run(official_small_config(), str(tmp_path / "nothing"), str(root / "clip.mp4"))
