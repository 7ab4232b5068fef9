"""Decoding real encoded videos and the official test-time views (reference 5.2, 5.3, 8.1 item 11)."""

import math

import av
import numpy as np
import pytest

from conftest import grey_video
from xvit_jax.data import video
from xvit_jax.errors import UserError

NUM, HEIGHT, WIDTH = 20, 48, 64


def grey(i):
  return 10 * i + 20  # frame i is a flat grey of this level: order and count survive a lossy codec


def write_video(path, codec, num=NUM, height=HEIGHT, width=WIDTH):
  return grey_video(path, num, height, width, codec, rate=10, level=grey)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  d = tmp_path_factory.mktemp("videos")
  return {"mp4": write_video(d / "clip.mp4", "libx264"), "webm": write_video(d / "clip.webm", "libvpx-vp9")}


def check_frames(frames):
  assert frames.shape == (NUM, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
  means = frames.reshape(NUM, -1).mean(axis=1)
  np.testing.assert_allclose(means, [grey(i) for i in range(NUM)], atol=3)  # limited-range YUV round trip
  assert np.all(np.diff(means) > 5)


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_decode_file_and_bytes(videos, container):
  path = videos[container]
  check_frames(video.decode(path))
  check_frames(video.decode(str(path)))
  check_frames(video.decode(path.read_bytes()))


def expect_one_line_error(source, name):
  with pytest.raises(UserError) as info:
    video.decode(source)
  message = str(info.value)
  assert message.startswith(f"cannot decode video {name}: ") and "\n" not in message
  return message


def test_bad_files_give_one_line_user_errors(videos, tmp_path):
  truncated = tmp_path / "truncated.mp4"
  truncated.write_bytes(videos["mp4"].read_bytes()[:200])
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  text = tmp_path / "notes.txt"
  text.write_text("not a video\n" * 20)
  missing = tmp_path / "missing.mp4"
  for path in (truncated, empty, text, missing):
    expect_one_line_error(path, str(path))
  assert "No such file" in expect_one_line_error(missing, str(missing))
  expect_one_line_error(videos["mp4"].read_bytes()[:200], "<200 bytes>")
  expect_one_line_error(b"", "<0 bytes>")


def test_audio_only_and_frameless_files(tmp_path):
  def audio(stream):
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    return stream.encode(frame) + stream.encode()

  wav = tmp_path / "sound.wav"
  with av.open(str(wav), "w") as container:
    container.mux(audio(container.add_stream("pcm_s16le", rate=8000)))
  assert expect_one_line_error(wav, str(wav)).endswith("no video stream")

  mkv = tmp_path / "frameless.mkv"  # declares a video stream but holds only audio packets
  with av.open(str(mkv), "w") as container:
    stream = container.add_stream("libvpx-vp9", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    container.mux(audio(container.add_stream("pcm_s16le", rate=8000)))
  assert expect_one_line_error(mkv, str(mkv)).endswith("no frames decoded")


def test_dense_indices():
  one_clip = video.dense_indices(300, 16, 16, clip_index=0, num_clips=1)
  assert one_clip.dtype == np.int64
  np.testing.assert_array_equal(one_clip, np.arange(0, 256, 17))  # linspace(0, 255, 16): step 17
  # Two clips: start = max(300 - 256, 0) * k / 2 -> 0 and 22.
  np.testing.assert_array_equal(video.dense_indices(300, 16, 16, clip_index=1, num_clips=2), 22 + np.arange(0, 256, 17))
  np.testing.assert_array_equal(video.dense_indices(344, 16, 16, clip_index=1, num_clips=2), 44 + np.arange(0, 256, 17))
  # Three clips of a 310-frame video: start 54 / 3 = 18 and 2 * 54 / 3 = 36.
  np.testing.assert_array_equal(video.dense_indices(310, 16, 16, clip_index=2, num_clips=3), 36 + np.arange(0, 256, 17))
  # Too short: the clip starts at 0 and clamps at the last frame.
  np.testing.assert_array_equal(video.dense_indices(100, 16, 16, clip_index=0, num_clips=1),
                                [0, 17, 34, 51, 68, 85] + [99] * 10)
  # Fractional positions truncate: linspace(0, 7, 4) = 0, 2.33, 4.67, 7; linspace(0, 23, 3) = 0, 11.5, 23.
  np.testing.assert_array_equal(video.dense_indices(50, 4, 2, clip_index=0, num_clips=1), [0, 2, 4, 7])
  np.testing.assert_array_equal(video.dense_indices(50, 3, 8, clip_index=0, num_clips=1), [0, 11, 23])
  with pytest.raises(UserError):
    video.dense_indices(0, 16, 16, clip_index=0, num_clips=1)


def test_segment_indices():
  # 33 frames, 16 segments: seg = 32 / 16 = 2, segment i spans [2i, 2i + 2].
  i = np.arange(16)
  np.testing.assert_array_equal(video.segment_indices(33, 16, view=0), 2 * i + 1)
  np.testing.assert_array_equal(video.segment_indices(33, 16, view=1), 2 * i)
  np.testing.assert_array_equal(video.segment_indices(33, 16, view=2), 2 * i + 2)
  # 10 frames, 4 segments: seg = 2.25; bounds round(0, 2.25, 4.5, 6.75, 9) = 0, 2, 4, 7, 9
  # (4.5 rounds half to even, to 4, as the official np.round; half-up would give 5).
  np.testing.assert_array_equal(video.segment_indices(10, 4, view=0), [1, 3, 5, 8])
  np.testing.assert_array_equal(video.segment_indices(10, 4, view=1), [0, 2, 4, 7])
  np.testing.assert_array_equal(video.segment_indices(10, 4, view=2), [2, 4, 7, 9])
  # 5 frames, 8 segments (too short): seg = 0.5; bounds round(0, .5, 1, 1.5, 2, 2.5, 3, 3.5, 4)
  # = 0, 0, 1, 2, 2, 2, 3, 4, 4.
  np.testing.assert_array_equal(video.segment_indices(5, 8, view=0), [0, 0, 1, 2, 2, 2, 3, 4])
  with pytest.raises(UserError):
    video.segment_indices(10, 4, view=3)


def torch_bilinear_reference(image, out_h, out_w):
  """torch.nn.functional.interpolate(bilinear, align_corners=False) written out pixel by pixel."""
  in_h, in_w = image.shape[:2]

  def taps(dst, n_in, n_out):
    src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(math.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    lam = src - i0
    return i0, i1, 1 - lam, lam

  out = np.zeros((out_h, out_w) + image.shape[2:])
  for y in range(out_h):
    y0, y1, wy0, wy1 = taps(y, in_h, out_h)
    for x in range(out_w):
      x0, x1, wx0, wx1 = taps(x, in_w, out_w)
      out[y, x] = (wy0 * (wx0 * image[y0, x0] + wx1 * image[y0, x1])
                   + wy1 * (wx0 * image[y1, x0] + wx1 * image[y1, x1]))
  return out


@pytest.mark.parametrize("shape,size,out_hw", [
    ((7, 10), 4, (4, 5)),     # landscape downscale: long side floor(10 / 7 * 4) = 5
    ((7, 10), 9, (9, 12)),    # upscale: floor(10 / 7 * 9) = floor(12.86) = 12
    ((13, 5), 3, (7, 3)),     # portrait: floor(13 / 5 * 3) = floor(7.8) = 7
    ((6, 6), 4, (4, 4)),
])
def test_resize_short_side_matches_torch_formula(shape, size, out_hw):
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, size=(2,) + shape + (3,)).astype(np.uint8)
  out = video.resize_short_side(frames, size)
  assert out.dtype == np.float32 and out.shape == (2,) + out_hw + (3,)
  for t in range(2):
    np.testing.assert_allclose(out[t], torch_bilinear_reference(frames[t].astype(np.float64), *out_hw), atol=1e-3)


def test_resize_short_side_keeps_matching_frames_and_does_not_antialias():
  frames = np.random.default_rng(1).uniform(-1, 1, size=(2, 5, 9, 3)).astype(np.float32)
  np.testing.assert_array_equal(video.resize_short_side(frames, 5), frames)  # the official early return
  # A 1-pixel checkerboard shrunk by 3: every output samples exactly one source pixel (source
  # coordinate 3 * dst + 1), so no averaging happens and the contrast stays full. An antialiased
  # resize (a 3-pixel-wide filter) would give near-uniform grey.
  board = (np.indices((12, 12)).sum(axis=0) % 2 * 255).astype(np.uint8)[None, :, :, None]
  out = video.resize_short_side(board, 4)
  np.testing.assert_array_equal(out, board[:, 1::3, 1::3].astype(np.float32))
  assert out.min() == 0 and out.max() == 255


def test_resize_short_side_matches_jax_without_antialias():
  jax = pytest.importorskip("jax")
  frames = np.random.default_rng(2).uniform(-1, 1, size=(2, 30, 41, 3)).astype(np.float32)
  out = video.resize_short_side(frames, 17)  # long side floor(41 / 30 * 17) = 23
  expected = jax.image.resize(frames, (2, 17, 23, 3), "linear", antialias=False)
  np.testing.assert_allclose(out, np.asarray(expected), atol=1e-5)


def test_three_crops():
  frames = np.arange(2 * 4 * 9 * 1).reshape(2, 4, 9, 1)  # landscape: H = 4, W = 9, crop 4
  crops = video.three_crops(frames, 4)
  assert crops.shape == (3, 2, 4, 4, 1)
  for crop, x in zip(crops, [0, 3, 5]):  # centre ceil((9 - 4) / 2) = 3, right 9 - 4 = 5
    np.testing.assert_array_equal(crop, frames[:, :, x:x + 4])
  portrait = np.arange(1 * 10 * 5 * 3).reshape(1, 10, 5, 3)
  crops = video.three_crops(portrait, 4)  # top 0, centre ceil(6 / 2) = 3, bottom 6; x = ceil(1 / 2) = 1
  for crop, y in zip(crops, [0, 3, 6]):
    np.testing.assert_array_equal(crop, portrait[:, y:y + 4, 1:5])
  square = np.arange(6 * 6).reshape(1, 6, 6, 1)
  np.testing.assert_array_equal(video.three_crops(square, 6), np.broadcast_to(square, (3, 1, 6, 6, 1)))


def test_eval_views_from_a_real_video(videos):
  frames = video.decode(videos["webm"])
  views = video.eval_views(frames, num_frames=4, image_size=32, sampling="dense", stride=2, temporal_views=2)
  assert views.shape == (6, 4, 32, 32, 3) and views.dtype == np.float32
  assert 0 <= views.min() and views.max() <= 255  # pixels: normalised on the device
  # Flat frames stay flat: each view frame is the grey of the sampled frame. 20 frames, span 8: clip k
  # starts at 12 * k / 2, indices linspace(start, start + 7, 4) -> 0, 2, 4, 7 and 6, 8, 10, 13.
  for view, index in zip([0, 3], [[0, 2, 4, 7], [6, 8, 10, 13]]):
    expected = np.array([grey(i) for i in index], np.float64)
    np.testing.assert_allclose(views[view].mean(axis=(1, 2, 3)), expected, atol=0.03 * 255 / 2)
  segment = video.eval_views(frames, num_frames=4, image_size=16, sampling="segment", temporal_views=3,
                             spatial_crops=1)
  assert segment.shape == (3, 4, 16, 16, 3)


def test_eval_views_matches_the_steps_and_rejects_bad_requests():
  frames = np.random.default_rng(3).integers(0, 256, size=(30, 12, 20, 3)).astype(np.uint8)
  views = video.eval_views(frames, num_frames=5, image_size=10, sampling="segment", temporal_views=2)
  assert views.shape == (6, 5, 10, 10, 3)
  for k in range(2):
    clip = video.resize_short_side(frames[video.segment_indices(30, 5, view=k)], 10)  # (5, 10, 16, 3)
    np.testing.assert_array_equal(views[3 * k:3 * k + 3], video.three_crops(clip, 10))
  # the official order (normalise, then resize) within float32 rounding of ours (resize, normalise on the device)
  from xvit_jax import preprocess  # pylint: disable=import-outside-toplevel
  normalised = (frames.astype(np.float32) / 255 - 0.5) / 0.5
  official = video.three_crops(video.resize_short_side(normalised[video.segment_indices(30, 5, view=0)], 10), 10)
  np.testing.assert_allclose(preprocess.normalize(views[:3]), official, rtol=0, atol=1e-6)
  with pytest.raises(UserError, match="stride"):
    video.eval_views(frames, num_frames=4, image_size=8, sampling="dense")
  with pytest.raises(UserError, match="sampling"):
    video.eval_views(frames, num_frames=4, image_size=8, sampling="uniform")
  with pytest.raises(UserError):
    video.eval_views(frames[:0], num_frames=4, image_size=8, sampling="segment")


def test_video_module_does_not_import_jax(repo):
  import subprocess
  import sys
  code = "import sys, xvit_jax.data.video; assert not any(m.split('.')[0] in ('jax', 'flax') for m in sys.modules)"
  subprocess.run([sys.executable, "-c", code], cwd=repo, check=True)


# --- the stored format (2.0.0): JPEG frames, decoded only when sampled -----------------------------------

def stored(frames):
  from xvit_jax.data.builders import common  # pylint: disable=import-outside-toplevel
  data, ends = common.encode(iter(frames))
  return video.JpegFrames(data, ends, "clip"), data, ends


def test_jpeg_frames_decode_only_the_frames_indexed_and_name_a_damaged_one():
  levels = np.arange(12) * 20 + 10
  frames, data, ends = stored(np.broadcast_to(levels[:, None, None, None], (12, 48, 64, 3)).astype(np.uint8))
  picked = frames[np.array([3, 0, 3, 11])]
  assert picked.shape == (4, 48, 64, 3) and picked.dtype == np.uint8
  np.testing.assert_allclose(picked.mean(axis=(1, 2, 3)), levels[[3, 0, 3, 11]], atol=1)
  damaged = bytearray(data)
  start = int(ends[4])
  damaged[start:int(ends[5])] = b"\0" * (int(ends[5]) - start)  # frame 5 is no JPEG now
  intact = frames[np.array([0, 4, 6, 11])]
  frames = video.JpegFrames(bytes(damaged), ends, "clip_7")
  np.testing.assert_array_equal(frames[np.array([0, 4, 6, 11])], intact)  # the other frames still read
  with pytest.raises(UserError, match=r"^cannot decode video clip_7: frame 5: "):
    frames[np.array([2, 5])]


def test_jpeg_frames_refuse_a_forged_size_and_offsets_that_do_not_cut_the_bytes():
  frames, data, ends = stored(np.full((3, 16, 16, 3), 100, np.uint8))
  sof = data.index(b"\xff\xc0")  # baseline frame header: length (2), precision (1), height (2), width (2)
  forged = bytearray(data[:ends[0]])
  forged[sof + 5:sof + 9] = (9000).to_bytes(2, "big") + (9000).to_bytes(2, "big")
  with pytest.raises(UserError, match=r"^cannot decode video big: frame 0: it claims 9000x9000 pixels, over the limit"):
    video.JpegFrames(bytes(forged), [len(forged)], "big")[np.array([0])]
  with pytest.raises(UserError, match=r"^cannot decode video cut: its frame offsets do not cut its "):
    video.JpegFrames(data, ends[:-1], "cut")


def test_preparation_streams_a_long_high_resolution_video_in_bounded_memory():
  """A 1080p source of 40 frames (250 MB decoded) is stored with at most a few frames in memory at once."""
  import tracemalloc  # pylint: disable=import-outside-toplevel
  from xvit_jax.data.builders import common  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  tile = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
  made = []

  def source():
    for t in range(40):
      made.append(t)
      yield np.roll(tile, 8 * t, axis=1)

  tracemalloc.start()
  try:
    data, ends = common.encode(source())
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert len(ends) == 40 and made == list(range(40))
  assert video.JpegFrames(data, ends, "hd")[np.array([39])].shape == (1, 256, 454, 3)
  assert peak < 5 * tile.nbytes + len(data)  # all 40 frames would be 40 x 6.2 MB


@pytest.mark.parametrize("shape, size, crop", [
    ((3, 30, 41, 3), 17, (2, 3, 12, 15)), ((2, 41, 30, 3), 20, (5, 0, 20, 9)),
    ((2, 24, 32, 3), 24, (4, 6, 16, 16)), ((2, 20, 26, 3), 33, (0, 9, 33, 33))])
def test_a_cropped_resize_equals_the_whole_resize_cropped_bit_for_bit(shape, size, crop):
  frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  top, left, h, w = crop
  part = video.resize_short_side(frames, size, crop=crop)
  assert part.dtype == np.float32 and part.shape == (shape[0], h, w, 3)
  np.testing.assert_array_equal(part, video.resize_short_side(frames, size)[:, top:top + h, left:left + w])
  floats = frames.astype(np.float32) / 7  # floats go the same way
  np.testing.assert_array_equal(video.resize_short_side(floats, size, crop=crop),
                                video.resize_short_side(floats, size)[:, top:top + h, left:left + w])
