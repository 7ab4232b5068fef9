"""The storage benchmark's readers (xvit_jax/data/builders/storage_benchmark.py) return the frames they are
asked for: seeking h264 to the keyframe before each sampled frame gives exactly the frames of decoding the
whole video, at every keyframe interval measured, and JPEG frames come back at the source's size. Its rates
are not checked (speed goes to BENCHMARKS.md)."""

import numpy as np
import pytest

from xvit_jax.data import natural_clips
from xvit_jax.data.builders import common
from xvit_jax.data.builders import storage_benchmark as sb


@pytest.fixture(scope="module")
def clip():
  return natural_clips.clip(3, frames=40, height=32, width=48, fps=30)


@pytest.mark.parametrize("gop", [16, 8, 4])
def test_seeking_h264_gives_the_frames_of_a_whole_decode(clip, gop):
  data = common.encode_h264(clip, gop=gop)
  whole = sb.decode_h264(data)
  assert len(whole) == len(clip)
  for index in ([0, 5, 6, 7, 20, 39], [3, 17, 18, 33], [39]):  # within one keyframe interval, across, the last
    assert all(np.array_equal(a, whole[i]) for a, i in zip(sb.decode_h264_sampled(data, index, gop), index))


@pytest.mark.parametrize("library", ["simplejpeg", "PIL"])
def test_jpeg_frames_decode_to_the_source_size_and_close_to_it(clip, library):
  images = sb.encode_jpeg(clip, 90, library)
  frames = np.stack(sb.decode_jpeg([images[i] for i in (0, 39)], library))
  assert frames.shape == (2, 32, 48, 3)
  assert np.abs(frames.astype(np.float32) - clip[[0, 39]]).mean() < 8
