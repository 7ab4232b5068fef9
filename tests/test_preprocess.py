"""The one preprocessing definition (xvit_jax.preprocess) against the host formulas it replaced, and what
crosses to the device: uint8 pixels, normalised, erased and mixed inside the compiled train step, mixup
without communication when every device holds whole groups."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, cpu_env, tiny_config
from xvit_jax import preprocess
from xvit_jax.data import pipeline, sources, synthetic, transforms, video
from xvit_jax.errors import UserError


def host_normalize(frames):
  """The host's normalisation before pixels went to the device: the official tensor_normalize in numpy float32."""
  return (np.asarray(frames, np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)


def host_mixup(videos, partners, lams, group):
  """transforms.mixup's blend on the host before: lam * video_i + (1 - lam) * video_partner, in float32."""
  out = []
  for i, (video, partner, lam) in enumerate(zip(videos, partners, lams)):
    out.append((lam * video + (1 - lam) * videos[i // group * group + partner]).astype(np.float32, copy=False))
  return np.stack(out)


def test_normalize_is_bitwise_the_host_formula_for_every_pixel_value():
  pixels = np.arange(256, dtype=np.uint8).reshape(1, 4, 8, 8, 1).repeat(3, axis=-1)
  for normalize in (preprocess.normalize, jax.jit(preprocess.normalize)):
    out = np.asarray(normalize(pixels))
    assert out.dtype == np.float32 and out.min() == -1 and out.max() == 1
    np.testing.assert_array_equal(out, host_normalize(pixels))
    np.testing.assert_array_equal(normalize(pixels.astype(np.float32)), host_normalize(pixels))  # integer floats
  resized = np.random.default_rng(0).uniform(0, 255, (4096,)).astype(np.float32)  # eval views: any float
  np.testing.assert_allclose(jax.jit(preprocess.normalize)(resized), host_normalize(resized), rtol=0, atol=2.5e-7)


def test_erase_sets_the_hosts_box_to_mid_grey_after_normalising():
  """What transforms.random_erasing did on the host: the box set to 0 in every normalised frame; (0, 0, 0, 0)
  leaves the clip as it is."""
  size, rng = 24, np.random.default_rng(1)
  clips = rng.integers(1, 256, (12, 3, size, size, 3), dtype=np.uint8)  # no pixel normalises to exactly 0
  boxes = [transforms.erasing_box(size, size, np.random.default_rng(seed), p=0.9) for seed in range(12)]
  assert sum(box is None for box in boxes) >= 1 and sum(box is not None for box in boxes) >= 8
  expected = host_normalize(clips)
  for clip, box in zip(expected, boxes):
    if box is not None:
      top, left, h, w = box
      clip[:, top:top + h, left:left + w] = 0
  box_array = np.array([box or transforms.NO_BOX for box in boxes], np.int32)
  out = jax.jit(lambda v, b: preprocess.erase(preprocess.normalize(v), b))(clips, box_array)
  np.testing.assert_array_equal(out, expected)


def test_train_inputs_mix_as_the_host_did_within_float32_rounding():
  """A pipeline batch with mixup in groups of 4: the device's normalised, mixed videos are the host's old
  lam * x_i + (1 - lam) * x_partner of the same draws, group by group."""
  config = tiny_config()
  ds = pipeline.train_dataset(synthetic.from_config(config, "train"), global_batch=8, seed=5,
                              clip_fn=sources.TrainClip(config), mixup=0.4, mixup_group=4)
  batch = next(iter(ds))
  assert batch["video"].dtype == np.uint8 and batch["mixup_partner"].dtype == np.int32
  for rows in (slice(0, 4), slice(4, 8)):
    assert sorted(batch["mixup_partner"][rows]) == [0, 1, 2, 3] and list(batch["mixup_partner"][rows]) != [0, 1, 2, 3]
    assert len(set(batch["mixup_lam"][rows])) == 1 and 0 < batch["mixup_lam"][rows][0] < 1
  out = np.asarray(jax.jit(preprocess.train_inputs, static_argnums=1)(batch, 4))
  expected = host_mixup(host_normalize(batch["video"]), batch["mixup_partner"], batch["mixup_lam"], 4)
  np.testing.assert_allclose(out, expected, rtol=0, atol=2.5e-7)
  assert np.abs(out - host_normalize(batch["video"])).max() > 0.1  # the clips were mixed


HLO_ON_8_DEVICES = r"""
import json, re, sys
import jax, jax.numpy as jnp
sys.path.insert(0, "tests")
from conftest import tiny_config
from xvit_jax import optim, preprocess, sharding, state, train

COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")
count = lambda hlo: {op: len(re.findall(rf" {op}(-start)?\(", hlo)) for op in COLLECTIVES}
config = tiny_config(num_layers=1)
config.batch_size, config.augment.mixup_group = 16, 2  # 2 rows on each of 8 devices: one whole group each
mesh = sharding.make_mesh(config.mesh)
tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
graphdef, abstract, shardings = state.abstract(config, tx, mesh)
m = config.model
spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))
mixed = {"video": spec((16, m.num_frames, m.image_size, m.image_size, 3), jnp.uint8),
         "label": spec((16,), jnp.int32), "bad": spec((16,), jnp.int32), "erase": spec((16, 4), jnp.int32),
         "mixup_partner": spec((16,), jnp.int32), "mixup_lam": spec((16,), jnp.float32),
         "mixup_label": spec((16,), jnp.int32)}
step = train.make_train_step(config, graphdef, tx, schedule, shardings=shardings)
hlo = step.lower(abstract, mixed).compile().as_text()
entry = hlo[hlo.index("\nENTRY"):]
out = {"step": count(hlo), "params": re.findall(r"(\w+\[[\d,]*\])\{[^}]*\} parameter\(", entry)}
for group in (2, 4):  # 4: a group spans two devices' rows
  inputs = jax.jit(lambda b, group=group: preprocess.train_inputs(b, group)).lower(mixed).compile().as_text()
  out[f"inputs_group_{group}"] = count(inputs)
print(json.dumps(out))
"""


def test_the_compiled_step_takes_uint8_clips_and_mixes_them_without_communication():
  """The train step on 8 devices (data parallel), 2 rows each: its video parameter is u8 (each device's 2
  clips), and with erasing and mixup in groups of 2 its only collectives are the gradients' all-reduce; the
  same preprocessing in groups of 4 (a group on two devices) would gather, which shows the count sees it."""
  result = subprocess.run([sys.executable, "-c", HLO_ON_8_DEVICES], cwd=REPO, env=cpu_env(8), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.splitlines()[-1])
  assert "u8[2,4,16,16,3]" in out["params"], out["params"]
  assert not any(p.startswith("f32[") and p.endswith(",4,16,16,3]") for p in out["params"])
  assert out["step"]["all-reduce"] > 0, out  # the gradients: the count does count
  assert out["step"]["all-gather"] == out["step"]["all-to-all"] == out["step"]["collective-permute"] == 0, out
  assert sum(out["inputs_group_2"].values()) == 0, out
  assert out["inputs_group_4"]["all-gather"] + out["inputs_group_4"]["all-to-all"] + \
      out["inputs_group_4"]["collective-permute"] > 0, out


@pytest.mark.parametrize("shape, size, kwargs", [
    ((40, 256, 340, 3), 224, dict(sampling="dense", stride=2)),  # Kinetics as prepared: downscale, 3 crops
    ((30, 240, 426, 3), 224, dict(sampling="segment", temporal_views=2)),  # SSv2: 2 x 3 views
    ((30, 300, 200, 3), 160, dict(sampling="segment", temporal_views=3, spatial_crops=1)),  # portrait, centre
    ((20, 256, 300, 3), 256, dict(sampling="dense", stride=4)),  # short side = crop: no resize
    ((20, 120, 90, 3), 224, dict(sampling="dense", stride=3)),  # upscale of a small portrait video
])
def test_eval_views_on_the_device_equal_the_host_views(shape, size, kwargs):
  """Evaluation ships uint8 windows and taps; the device's resize gives the official test views that
  video.eval_views cuts on the host (predict's path) within float32 rounding, in the same order."""
  frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  window = video.window_size(256)
  shipped = video.view_windows(frames, num_frames=8, image_size=size, window=window, **kwargs)
  host = video.eval_views(frames, num_frames=8, image_size=size, **kwargs)
  assert shipped["video"].dtype == np.uint8 and shipped["video"].shape == (len(host), 8, window, window, 3)
  views = np.asarray(jax.jit(preprocess.eval_views)({k: v[None] for k, v in shipped.items()}))
  assert views.shape == host.shape
  np.testing.assert_allclose(views, host_normalize(host), rtol=0, atol=2e-6)
  with pytest.raises(UserError, match=r"clip.mp4: a view reads \d+ source pixels, more than eval windows of 64"):
    video.view_windows(frames, num_frames=8, image_size=size, window=64, name="clip.mp4", **kwargs)
