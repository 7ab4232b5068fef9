"""The PyTorch transcription of the official forward (used by the benchmark's comparison) against the
independent numpy one. Needs torch (requirements-torch.txt), so it runs with the slow tests."""

import numpy as np
import pytest

import official_numpy


@pytest.mark.slow
@pytest.mark.parametrize("frames,segments,shift_div", [(8, 8, 4), (16, 8, 8), (16, 16, 4)])
def test_official_torch_matches_the_numpy_transcription(frames, segments, shift_div):
  import torch  # pylint: disable=import-outside-toplevel
  from xvit_jax.convert.official_torch import OfficialXViT  # pylint: disable=import-outside-toplevel
  sd = official_numpy.random_official_state_dict(num_classes=5, hidden=32, depth=2, heads=4, patch=8, image_size=16)
  video = np.random.default_rng(frames).standard_normal((2, 3, frames, 16, 16)).astype(np.float32)
  expected = official_numpy.official_forward(sd, video, num_segments=segments, shift_div=shift_div, heads=4)
  got = OfficialXViT(sd, num_segments=segments, shift_div=shift_div, heads=4)(torch.from_numpy(video)).numpy()
  np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())
