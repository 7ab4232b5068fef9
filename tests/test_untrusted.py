"""Files from the internet are data, never programs (RELIABILITY.md, "Untrusted files").

Weights that would run code when unpickled, inputs and videos whose headers claim more than they hold: each
is refused in one line before anything in it runs or any large allocation; the official checkpoint layout
and plain state dicts still load. Dataset annotations that point outside the manual folder are tested with
each layout in test_builders.py; tampered model cards in test_export.py.
"""

import os
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from flax import nnx

from conftest import run_module, tiny_config, write_video
from xvit_jax import predict
from xvit_jax import state as state_lib
from xvit_jax.convert import official, pretrained
from xvit_jax.data import video
from xvit_jax.errors import UserError
from xvit_jax.models import create_model
from xvit_jax.tools import import_official


class RunsCode:
  """Pickles as a call of os.system: what a malicious .pth holds."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def official_state_dict(cfg, seed=0):
  """{official key: float32 array} of a tiny model with random weights."""
  params = nnx.to_pure_dict(nnx.state(create_model(cfg.model, seed=seed), nnx.Param))
  return {k: np.asarray(v, np.float32) for k, v in official.export_state_dict(params, cfg.model).items()}


def test_a_pth_that_would_run_code_is_refused_in_one_line_and_runs_nothing(tmp_path):
  cfg = tiny_config()
  marker, evil = tmp_path / "MARKER", tmp_path / "xvit_b16_16_k600.pth"
  weights = {k: torch.tensor(v) for k, v in official_state_dict(cfg).items()}
  torch.save({"epoch": 30, "model_state": weights, "cfg": RunsCode(marker)}, evil)

  result = run_module("xvit_jax.tools.import_official", f"--checkpoint={evil}", "--config=configs/demo.py",
                      f"--output={tmp_path / 'out'}")
  assert result.returncode == 2, result.stderr[-2000:]
  line = result.stderr.strip()
  assert line.count("\n") == 0 and line.startswith(f"error: refusing {evil}: loading it would run code"), line
  assert "posix.system" in line and "weights_only" not in line  # names the culprit, suggests no unsafe load
  assert not marker.exists() and not (tmp_path / "out").exists()

  params = nnx.to_pure_dict(nnx.state(create_model(cfg.model, seed=1), nnx.Param))
  with pytest.raises(UserError, match="loading it would run code"):  # config.init_from takes this path
    pretrained.load(str(evil), cfg.model, params)
  assert not marker.exists()


def test_the_released_checkpoint_layout_and_plain_state_dicts_load(tmp_path):
  """PySlowFast saves {"epoch", "model_state", "optimizer_state", "cfg": cfg.dump()}: tensors, numbers and a
  YAML string; DDP adds `module.`; timm and numpy numbers appear in other files."""
  cfg = tiny_config(consensus="temporal_attention")
  state = official_state_dict(cfg)
  tensors = {f"module.{k}": torch.tensor(v) for k, v in state.items()}
  first = next(iter(tensors.values()))
  torch.save({"epoch": 30, "model_state": tensors, "cfg": "TRAIN:\n  BATCH_SIZE: 64\nMODEL:\n  NUM_CLASSES: 3\n",
              "optimizer_state": {"state": {0: {"momentum_buffer": torch.zeros_like(first)}},
                                  "param_groups": [{"lr": 0.03, "momentum": 0.9, "nesterov": True, "params": [0]}]},
              "best_top1": np.float64(0.75), "schedule": np.arange(3)}, tmp_path / "official.pth")
  import_official.import_checkpoint(cfg, str(tmp_path / "official.pth"), str(tmp_path / "imported"))
  model = state_lib.inference_model(cfg, str(tmp_path / "imported"))[0]
  back = official.export_state_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg.model)
  assert back.keys() == state.keys()
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)

  timm = {k[len("base_model."):]: torch.tensor(v) for k, v in state.items() if k.startswith("base_model.")}
  torch.save(timm, tmp_path / "timm.pth")
  weights = pretrained.read_weights(str(tmp_path / "timm.pth"))
  assert set(weights) == {f"base_model.{k}" for k in timm}
  np.testing.assert_array_equal(weights["base_model.cls_token"], state["base_model.cls_token"])


def test_without_torch_a_pth_is_refused_naming_the_requirements_file(tmp_path, monkeypatch):
  torch.save({"w": torch.zeros(2)}, tmp_path / "w.pth")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as where it is not installed
  with pytest.raises(UserError, match=r"needs torch: pip install -r requirements-torch.txt"):
    pretrained.read_weights(str(tmp_path / "w.pth"))


def forged_y4m(path, width, height):
  """A YUV4MPEG2 file whose header claims width x height frames, followed by one 64x64 frame's bytes."""
  path.write_bytes(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode() + b"FRAME\n" +
                   bytes(64 * 64 * 3 // 2))
  return path


def forged_avi(path, frames):
  """A real 8-frame MJPEG AVI whose headers (avih total frames, strh length) claim `frames` frames."""
  write_video(path, np.zeros((8, 32, 32, 3), np.uint8), codec="mjpeg", rate=30, pix_fmt="yuvj420p")
  data = bytearray(path.read_bytes())
  total = data.index(b"avih") + 8 + 16  # after microseconds per frame, max bytes, padding, flags
  length = data.index(b"strh") + 8 + 32  # after type, handler, flags, priority, language, initial, scale, rate, start
  data[total:total + 4] = data[length:length + 4] = frames.to_bytes(4, "little")
  path.write_bytes(bytes(data))
  return path


def test_videos_whose_headers_claim_absurd_sizes_are_refused_before_decoding(tmp_path):
  huge = forged_y4m(tmp_path / "huge.y4m", 12_000, 12_000)
  with pytest.raises(UserError, match=r"^cannot decode video .*huge.y4m: its header claims frames of 12000x12000 "
                                      r"pixels, over the limit of 67,108,864$"):
    video.decode(huge)
  long = forged_avi(tmp_path / "long.avi", 5_000_000)
  with pytest.raises(UserError, match=r"its header claims 5,000,000 frames, over the limit of 1,000,000$"):
    video.decode(long)
  with pytest.raises(UserError, match="its header claims 5,000,000 frames"):  # the streaming decoder too
    next(predict.windows(tiny_config(), str(long), stride=1.0))
  assert video.decode(forged_avi(tmp_path / "honest.avi", 8)).shape == (8, 32, 32, 3)

  # an impossible size: FFmpeg itself refuses to open it, still one line
  with pytest.raises(UserError, match=r"^cannot decode video .*impossible.y4m: [^\n]+$"):
    video.decode(forged_y4m(tmp_path / "impossible.y4m", 100_000, 100_000))

  result = run_module("xvit_jax.predict", "--config=configs/demo.py", f"--checkpoint={tmp_path / 'none'}",
                      f"--video={huge}")
  assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr[-2000:]
  assert "claims frames of 12000x12000 pixels" in result.stderr


def test_a_whole_video_decode_stops_at_its_memory_budget(tmp_path, monkeypatch):
  counted = forged_avi(tmp_path / "clip.avi", 8)  # the container says 8 frames: refused before decoding
  uncounted = write_video(tmp_path / "clip.y4m", np.zeros((8, 32, 32, 3), np.uint8), codec="rawvideo", rate=30,
                          format="yuv4mpegpipe")  # YUV4MPEG2 says no count: refused once decoded frames reach it
  monkeypatch.setattr(video, "MAX_DECODED_BYTES", 5 * 32 * 32 * 3)
  with pytest.raises(UserError, match=r"8 frames of 32x32 pixels take 2.29e-05 GiB decoded, over the limit"):
    video.decode(counted)
  with pytest.raises(UserError, match=r"6 frames of 32x32 pixels take"):
    video.decode(uncounted)


def test_an_npy_whose_header_claims_more_than_the_file_holds_allocates_nothing(tmp_path):
  forged = tmp_path / "forged.npy"
  header = {"descr": "<f4", "fortran_order": False, "shape": (48, 16, 224, 224, 3)}  # 7.4 GB claimed
  with open(forged, "wb") as f:
    np.lib.format.write_array_header_1_0(f, header)
    f.write(bytes(4096))
  tracemalloc.start()
  try:
    with pytest.raises(UserError, match=r"^cannot read .*forged.npy as .npy: "):
      predict.read_input(tiny_config(), str(forged))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 50 << 20, peak

  np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(UserError, match=r"objects.npy as .npy: .*Python objects"):
    predict.read_input(tiny_config(), str(tmp_path / "objects.npy"))
  np.save(tmp_path / "frames.npy", np.zeros((4, 16, 16, 3), np.uint8))
  with pytest.raises(UserError, match=r"frames.npy holds uint8 of shape \(4, 16, 16, 3\); a preprocessed input"):
    predict.read_input(tiny_config(), str(tmp_path / "frames.npy"))
  np.save(tmp_path / "clip.npy", np.ones((4, 16, 16, 3), np.float32))
  clips, fuse = predict.read_input(tiny_config(), str(tmp_path / "clip.npy"))
  assert clips.shape == (1, 4, 16, 16, 3) and isinstance(clips, np.ndarray) and not fuse


def test_an_npz_with_python_objects_is_refused(tmp_path):
  np.savez(tmp_path / "w.npz", w=np.zeros(2, np.float32), evil=np.array([RunsCode(tmp_path / "M")], dtype=object))
  with pytest.raises(UserError, match=r"^cannot read .*w.npz as .npz: .*allow_pickle=False"):
    pretrained.read_weights(str(tmp_path / "w.npz"))
  assert not (tmp_path / "M").exists()
