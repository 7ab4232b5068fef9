"""Self-checks of tests/official_numpy.py alone (no xvit_jax import)."""
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from official_numpy import (  # noqa: E402
    _erf, official_forward, random_official_state_dict, shift_official)

TINY = dict(hidden=32, depth=2, heads=4, mlp_ratio=4, patch=8, image_size=32)


def test_shift_worked_example_section_2_2():
    # T=3, heads=2, head_dim=4, SHIFT_DIV=4, one segment of 3 frames, 3 tokens.
    t_, h_, n_, dh = 3, 2, 3, 4
    x = (np.arange(t_ * h_ * n_ * dh, dtype=np.float64) + 1.0).reshape(t_, h_, n_, dh)
    out = shift_official(x, n_seg=3, fold_div=4)
    # ref §2.2 table: source frame per (out frame, channel c = h*4 + d); None = zero padding
    table = {0: [1, 1, None, None, 0, 0, 0, 0],
             1: [2, 2, 0, 0, 1, 1, 1, 1],
             2: [None, None, 1, 1, 2, 2, 2, 2]}
    expected = np.zeros_like(x)
    for t, row in table.items():
        for c, src in enumerate(row):
            if src is not None:
                expected[t, c // dh, :, c % dh] = x[src, c // dh, :, c % dh]
    np.testing.assert_array_equal(out, expected)


def test_shift_respects_segments_and_fold_zero_is_identity():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 4, 5, 8))
    np.testing.assert_array_equal(shift_official(x, 8, 10_000), x)  # fold = 32 // 10000 = 0
    # two segments of 8 behave like two independent clips
    both = shift_official(x, 8, 4)
    np.testing.assert_array_equal(both[:8], shift_official(x[:8], 8, 4))
    np.testing.assert_array_equal(both[8:], shift_official(x[8:], 8, 4))


def _expected_vitb_shapes(c, d=768, depth=12, mlp=3072):
    shapes = {
        "base_model.cls_token": (1, 1, d), "base_model.pos_embed": (1, 197, d),
        "base_model.temp_embed": (1, 8, 1, d),
        "base_model.patch_embed.proj.weight": (d, 3, 16, 16),
        "base_model.patch_embed.proj.bias": (d,),
        "base_model.norm.weight": (d,), "base_model.norm.bias": (d,),
        "new_fc.weight": (c, d), "new_fc.bias": (c,),
        "consensus.cls_token": (1, 1, d),
        "consensus.mlp_head.0.weight": (d,), "consensus.mlp_head.0.bias": (d,),
        "consensus.mlp_head.1.weight": (d, d), "consensus.mlp_head.1.bias": (d,),
        "consensus.mlp_head.4.weight": (c, d), "consensus.mlp_head.4.bias": (c,),
    }
    prefixes = [f"base_model.blocks.{i}" for i in range(depth)] + ["consensus.temporal_encoder.0"]
    for p in prefixes:
        shapes.update({
            f"{p}.norm1.weight": (d,), f"{p}.norm1.bias": (d,),
            f"{p}.attn.qkv.weight": (3 * d, d),
            f"{p}.attn.proj.weight": (d, d), f"{p}.attn.proj.bias": (d,),
            f"{p}.norm2.weight": (d,), f"{p}.norm2.bias": (d,),
            f"{p}.mlp.fc1.weight": (mlp, d), f"{p}.mlp.fc1.bias": (mlp,),
            f"{p}.mlp.fc2.weight": (d, mlp), f"{p}.mlp.fc2.bias": (d,),
        })
        if p.startswith("base_model"):  # VitHead qkv has no bias (ref §4.2)
            shapes[f"{p}.attn.qkv.bias"] = (3 * d,)
    return shapes


def test_vitb_state_dict_keys_and_shapes():
    sd = random_official_state_dict(num_classes=600)
    expected = _expected_vitb_shapes(600)
    assert set(sd) == set(expected)
    for k, shape in expected.items():
        assert sd[k].shape == shape, k
        assert sd[k].dtype == np.float32, k
    assert round(sum(v.size for v in sd.values()) / 1e6, 1) == 94.4  # ref §4.2 total


@pytest.mark.parametrize("t", [8, 16])
@pytest.mark.parametrize("consensus", ["vit", "avg"])
def test_tiny_forward_finite(t, consensus):
    sd = random_official_state_dict(num_classes=5, seed=3, **TINY)
    video = np.random.default_rng(0).uniform(-1, 1, (2, 3, t, 32, 32)).astype(np.float32)
    kw = dict(num_segments=8, shift_div=4, heads=4)
    if consensus == "avg":
        kw["num_segments"] = t  # avg assumes NUM_SEGMENTS == NUM_FRAMES
    logits = official_forward(sd, video, consensus=consensus, **kw)
    assert logits.shape == (2, 5) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    assert logits.std(axis=1).min() > 1e-2  # classes differ meaningfully
    assert not np.allclose(logits[0], logits[1])


def test_tiny_forward_shift_segment_and_period_matter():
    sd = random_official_state_dict(num_classes=5, seed=4, **TINY)
    video = np.random.default_rng(1).uniform(-1, 1, (1, 3, 16, 32, 32)).astype(np.float32)
    a = official_forward(sd, video, num_segments=8, shift_div=4, heads=4)
    b = official_forward(sd, video, num_segments=16, shift_div=4, heads=4)
    assert np.abs(a - b).max() > 1e-4
    with pytest.raises(AssertionError):  # B*T = 4 not divisible by the 8 temp_embed slots
        official_forward(sd, video[:, :, :4], num_segments=4, shift_div=4, heads=4)


def test_erf_matches_math_erf():
    x = np.linspace(-7, 7, 20001)
    ref = np.array([math.erf(v) for v in x])
    assert np.abs(_erf(x) - ref).max() < 1e-12


@pytest.mark.parametrize("div,sources", [
    (8, ["n"] * 64 + ["n"] * 32 + ["p"] * 32 + ["p"] * 64 + ["c"] * (9 * 64)),  # K400/K600
    (4, ["n"] * 192 + ["p"] * 192 + ["c"] * (6 * 64)),  # SSv2
])
def test_shift_per_head_table_section_2_1(div, sources):
    # frame t holds the constant t+1; in the middle frame, next = 3, prev = 1, current = 2
    x = np.broadcast_to(np.arange(1.0, 4.0)[:, None, None, None], (3, 12, 2, 64))
    out = shift_official(x, 3, div)[1]  # (H, N, Dh)
    want = np.array([{"n": 3.0, "p": 1.0, "c": 2.0}[s] for s in sources]).reshape(12, 1, 64)
    np.testing.assert_array_equal(out, np.broadcast_to(want, out.shape))
