"""Train-time clip augmentation (reference 5.1-5.3): synchronized over frames, reproducible, exact boxes."""

import numpy as np
import pytest
from PIL import Image

from xvit_jax.data import kernels, transforms, video

T, H, W, S = 4, 64, 80, 48


def image(seed=0, height=H, width=W):
  """A textured frame: smooth gradients plus noise, so crops, flips and colour ops all show."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width]
  base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (height + width)], -1)
  return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def clip(t=T, height=H, width=W):
  return np.stack([image(i, height, width) for i in range(t)])


ALL_ON = dict(image_size=S, flip_p=0.5, autoaugment=True, erasing_p=1.0)


@pytest.mark.parametrize("multiscale", [True, False])
def test_identical_frames_stay_identical(monkeypatch, multiscale):
  # The only per-frame draw is the geometric filter; with one filter to pick from, everything is shared.
  monkeypatch.setattr(transforms, "RESAMPLE", (Image.Resampling.BICUBIC,))
  frames = np.repeat(image()[None], T, axis=0)
  for seed in range(60):
    out, _ = transforms.augment_clip(frames, np.random.default_rng(seed), multiscale=multiscale,
                                     short_side_range=(S, S + 20), **ALL_ON)
    np.testing.assert_array_equal(out, np.repeat(out[:1], T, axis=0), err_msg=f"seed {seed}")


def test_autoaugment_frames_differ_only_by_their_filter():
  frames = np.repeat(image()[None, :S, :S], 8, axis=0)
  geometric_seen = differ_seen = 0
  for seed in range(80):
    plan = transforms.autoaugment_plan(np.random.default_rng(seed), len(frames))
    out = transforms.auto_augment(frames, np.random.default_rng(seed))
    keys = [tuple(f[t] for _, _, f in plan if f is not None) for t in range(len(frames))]
    geometric_seen += any(f is not None for _, _, f in plan)
    for t in range(len(frames)):
      first = keys.index(keys[t])
      np.testing.assert_array_equal(out[t], out[first], err_msg=f"seed {seed}")
    differ_seen += len(set(keys)) > 1 and any(not np.array_equal(o, out[0]) for o in out)
  assert geometric_seen > 10 and differ_seen > 5  # bilinear and bicubic frames do come out different


def test_reproducible_and_seed_dependent():
  frames = clip()
  for multiscale in (True, False):
    kwargs = dict(ALL_ON, multiscale=multiscale, short_side_range=(S, S + 30))
    a = transforms.augment_clip(frames, np.random.default_rng(7), **kwargs)
    b = transforms.augment_clip(frames, np.random.default_rng(7), **kwargs)
    c = transforms.augment_clip(frames, np.random.default_rng(8), **kwargs)
    for x, y in zip(a, b):  # the frames and the erasing box
      np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("multiscale", [True, False])
def test_shapes_dtypes_ranges(multiscale):
  for seed in range(5):
    out, box = transforms.augment_clip(clip(), np.random.default_rng(seed), multiscale=multiscale,
                                       short_side_range=(S, S + 16), **ALL_ON)
    assert out.shape == (T, S, S, 3) and out.dtype == np.uint8  # pixels: normalised on the device
    assert box.shape == (4,) and box.dtype == np.int32
    top, left, h, w = box
    assert 0 <= top and top + h <= S and 0 <= left and left + w <= S


def test_the_augmentation_draws_are_those_of_the_steps_in_order():
  """The rng stream of a clip: crop, flip, AutoAugment, then the erasing box (where the host erased after
  normalising, before the box went to the device): the same clips and boxes for the same seeds."""
  frames, boxes, flipped = clip(), set(), 0
  sides = {"multi-scale": None, "short side, resized": (S + 4, S + 10), "short side kept": (H, H)}
  for kind, side in sides.items():  # Kinetics' crop, SSv2's (resized, or the frames' short side kept)
    crop = (lambda rng: transforms.multiscale_crop(frames, rng, S)) if side is None else (
        lambda rng, side=side: transforms.short_side_jitter_crop(frames, rng, S, side))
    for seed in range(20):
      out, box = transforms.augment_clip(frames, np.random.default_rng(seed), multiscale=side is None,
                                         short_side_range=side or (S, S), **ALL_ON)
      rng = np.random.default_rng(seed)  # the steps one by one, the flip a strided copy of the crop
      cropped = crop(rng)
      mirrored = transforms.flip(cropped, rng)
      flipped += mirrored is not cropped
      np.testing.assert_array_equal(out, transforms.auto_augment(mirrored, rng), err_msg=f"{kind} {seed}")
      drawn = transforms.erasing_box(S, S, rng, p=1.0)
      np.testing.assert_array_equal(box, drawn or (0, 0, 0, 0))
      boxes.add(tuple(box))
  assert len(boxes) > 30 and 15 < flipped < 45
  _, none = transforms.augment_clip(frames, np.random.default_rng(0), image_size=S, erasing_p=0.0)
  np.testing.assert_array_equal(none, [0, 0, 0, 0])


def test_everything_off_is_the_crop():
  frames = clip(height=S, width=S)  # short side already S: no resize, the only crop is the frame
  out, box = transforms.augment_clip(frames, np.random.default_rng(0), image_size=S, multiscale=False,
                                     short_side_range=(S, S), flip_p=0, autoaugment=False)
  np.testing.assert_array_equal(out, frames)
  np.testing.assert_array_equal(box, [0, 0, 0, 0])
  with pytest.raises(ValueError):
    transforms.augment_clip(frames.astype(np.float32), np.random.default_rng(0), image_size=S)


def test_crop_pairs_and_offsets_follow_tsn():
  # short side 256, size 224: int(256 * s) = 256, 224, 192, 168; pairs with index distance <= 1
  sides = [256, 224, 192, 168]
  expected = {(sides[j], sides[i]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
  assert set(transforms.crop_pairs(256, 340, 224)) == expected and len(expected) == 10
  assert transforms.crop_pairs(226, 300, 224)[0] == (224, 224)  # |226 - 224| < 3: snapped
  assert transforms.crop_pairs(227, 300, 224)[0] == (227, 227)  # |227 - 224| = 3: kept
  assert transforms.fix_offsets(256, 340, 224, 192) == [
      (0, 0), (116, 0), (0, 64), (116, 64), (58, 32), (0, 32), (116, 32), (58, 64), (58, 0),
      (29, 16), (87, 16), (29, 48), (87, 48)]


def test_multiscale_box_draws_only_allowed_boxes_and_crops_it():
  height, width, size = 96, 128, 64
  pairs = set(transforms.crop_pairs(height, width, size))
  seen_pairs, seen_offsets = set(), set()
  for seed in range(400):
    x, y, cw, ch = transforms.multiscale_box(height, width, size, np.random.default_rng(seed))
    assert (cw, ch) in pairs
    assert (x, y) in transforms.fix_offsets(height, width, cw, ch)
    assert x + cw <= width and y + ch <= height
    seen_pairs.add((cw, ch))
    seen_offsets.add((cw, ch, x, y))
  assert seen_pairs == pairs and len(seen_offsets) > 60
  frames = clip(height=height, width=width)
  x, y, cw, ch = transforms.multiscale_box(height, width, size, np.random.default_rng(3))
  out = transforms.multiscale_crop(frames, np.random.default_rng(3), size)
  assert out.shape == (T, size, size, 3) and out.dtype == np.uint8
  want = Image.fromarray(frames[2, y:y + ch, x:x + cw]).resize((size, size), Image.Resampling.BILINEAR)
  np.testing.assert_array_equal(out[2], np.asarray(want))


def test_multiscale_resize_is_pils_bit_for_bit():
  """kernels.resize, the Kinetics crop's resize, against PIL's own per frame: shrinking (antialiased) and
  enlarging, one axis kept, nothing to resize, the vertical pass first (Pillow 13, when the height shrinks much
  more than the width) or second, mirrored or not, over an odd number of frames."""
  frames = clip(t=5)
  boxes = [(0, 0, 64, 64), (5, 3, 40, 56), (0, 0, 50, 64), (0, 0, 52, 58), (0, 0, 52, 56), (0, 0, 70, 56),
           (0, 2, S, 60), (2, 1, 70, S), (8, 8, S, S), (30, 10, 33, 29)]  # 52 x 58 vertical first, 52 x 56 not
  for box in boxes:
    for mirror in (False, True):
      x, y, w, h = box
      want = [Image.fromarray(f[y:y + h, x:x + w]).resize((S, S), Image.Resampling.BILINEAR) for f in frames]
      want = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in want] if mirror else want
      np.testing.assert_array_equal(kernels.resize(frames, box, S, mirror), np.stack([np.asarray(i) for i in want]),
                                    err_msg=f"box {box} mirror {mirror}")


def test_short_side_jitter_crop():
  frames = clip(height=40, width=60)
  lengths = set()
  for seed in range(200):
    out = transforms.short_side_jitter_crop(frames, np.random.default_rng(seed), 32, (40, 44))
    assert out.shape == (T, 32, 32, 3) and out.dtype == np.uint8
    lengths.add(int(round(np.random.default_rng(seed).uniform(40, 44))))
  assert lengths == {40, 41, 42, 43, 44}
  # short side already at the drawn length: the crop is a plain slice of the input
  out = transforms.short_side_jitter_crop(frames, np.random.default_rng(1), 32, (40, 40))
  rng = np.random.default_rng(1)
  rng.uniform(40, 40)
  y, x = rng.integers(0, 8), rng.integers(0, 28)
  np.testing.assert_array_equal(out, frames[:, y:y + 32, x:x + 32])
  portrait = clip(height=60, width=40)
  portrait = transforms.short_side_jitter_crop(portrait, np.random.default_rng(0), 32, (48, 48))
  assert portrait.shape == (T, 32, 32, 3)


def test_short_side_jitter_crop_is_the_float_resize_rounded():
  """The compiled crop (kernels.bilinear_crop) is the whole float32 torch-formula resize, cropped, mirrored when
  the flip is drawn, rounded to uint8: landscape, portrait and square frames, upscaled and downscaled."""
  mirrored = 0
  for height, width, side in ((40, 60, (40, 52)), (60, 40, (36, 50)), (37, 37, (40, 48)), (50, 70, (33, 36))):
    frames = clip(height=height, width=width)
    for seed in range(10):
      out = transforms.short_side_jitter_crop(frames, np.random.default_rng(seed), 32, side, flip_p=0.5)
      rng = np.random.default_rng(seed)  # the same draws, by hand
      length = int(round(rng.uniform(*side)))
      h, w = video.short_side_shape(height, width, length)
      y = int(rng.integers(0, h - 32)) if h > 32 else 0
      x = int(rng.integers(0, w - 32)) if w > 32 else 0
      want = video.resize_short_side(frames, length)[:, y:y + 32, x:x + 32]
      if rng.random() < 0.5:
        want, mirrored = want[:, :, ::-1], mirrored + 1
      np.testing.assert_array_equal(out, np.clip(np.rint(want), 0, 255).astype(np.uint8), err_msg=f"{height}x{width}")
  assert 5 < mirrored < 35


def test_geometric_ops_are_pils_transforms_bit_for_bit():
  """kernels.affine, which AutoAugment's Rotate, ShearX/Y and TranslateYRel use, against PIL's own `rotate` and
  `transform` (timm's calls) on every frame, each with its filter: square and oblong frames, identity included."""
  fill, affine = transforms.FILL, Image.Transform.AFFINE
  pil = {"Rotate": lambda im, v, r: im.rotate(v, resample=r, fillcolor=fill),
         "ShearX": lambda im, v, r: im.transform(im.size, affine, (1, v, 0, 0, 1, 0), r, fillcolor=fill),
         "ShearY": lambda im, v, r: im.transform(im.size, affine, (1, 0, 0, v, 1, 0), r, fillcolor=fill),
         "TranslateYRel": lambda im, v, r: im.transform(im.size, affine, (1, 0, 0, 0, 1, v * im.size[1]), r,
                                                        fillcolor=fill)}
  args = {"Rotate": (24.0, -27.0, 3.0, 0.0, -30.0), "ShearX": (0.27, -0.09), "ShearY": (-0.12, 0.0, 0.3),
          "TranslateYRel": (0.405, -0.18)}
  rng = np.random.default_rng(0)
  for frames in (clip(t=6, height=S, width=S), clip(t=5, height=H, width=W)):
    for name, values in args.items():
      for value in values:
        filters = [transforms.RESAMPLE[i] for i in rng.integers(2, size=len(frames))]
        out = transforms._geometric(frames, name, value, filters)
        want = np.stack([np.asarray(pil[name](Image.fromarray(f), value, r)) for f, r in zip(frames, filters)])
        np.testing.assert_array_equal(out, want, err_msg=f"{name} {value} on {frames.shape}")
  flat = clip(t=2, height=S, width=S)
  assert kernels.affine(flat, kernels.IDENTITY, [True, False]) is flat


def test_flip():
  frames = clip()
  np.testing.assert_array_equal(transforms.flip(frames, np.random.default_rng(0), p=1.0), frames[:, :, ::-1])
  assert transforms.flip(frames, np.random.default_rng(0), p=0.0) is frames
  flips = [not np.array_equal(transforms.flip(frames, np.random.default_rng(s)), frames) for s in range(200)]
  assert 60 < sum(flips) < 140


def test_random_erasing_boxes():
  """timm's box: inside the frame, its area and aspect in range (setting it to mid-grey on the device:
  test_preprocess.py)."""
  erased = 0
  for seed in range(100):
    box = transforms.erasing_box(S, S, np.random.default_rng(seed), p=1.0)
    if box is None:
      continue
    erased += 1
    top, left, h, w = box
    assert 0 <= top and top + h <= S and 0 <= left and left + w <= S
    # h and w are rounded from sides whose product is the area and whose ratio is the aspect
    assert (h - 0.5) * (w - 0.5) <= S * S / 3 and (h + 0.5) * (w + 0.5) >= 0.02 * S * S
    assert (h + 0.5) / (w - 0.5) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3
  assert erased > 80
  assert all(transforms.erasing_box(S, S, np.random.default_rng(seed), p=0.0) is None for seed in range(10))


def test_autoaugment_changes_some_clips_and_keeps_shape():
  frames = clip(height=S, width=S)
  changed = 0
  for seed in range(30):
    out = transforms.auto_augment(frames, np.random.default_rng(seed))
    assert out.shape == frames.shape and out.dtype == np.uint8
    changed += not np.array_equal(out, frames)
  assert 10 < changed < 30
  assert len(transforms.POLICY_V0) == 25 and all(len(sub) == 2 for sub in transforms.POLICY_V0)


def test_autoaugment_point_ops_match_timm_luts():
  i = np.arange(256)
  np.testing.assert_array_equal(transforms._lut("Solarize", 77), [v if v < 77 else 255 - v for v in i])
  np.testing.assert_array_equal(transforms._lut("SolarizeAdd", 33),
                                [min(255, v + 33) if v < 128 else v for v in i])
  np.testing.assert_array_equal(transforms._lut("Posterize", 2), i & 0b11000000)
  np.testing.assert_array_equal(transforms._lut("Posterize", 0), 0 * i)
  np.testing.assert_array_equal(transforms._lut("Invert", None), 255 - i)


def test_equalize_and_autocontrast_tables_are_pils():
  """Equalize and AutoContrast compute PIL ImageOps' tables in numpy (PIL builds them in Python loops): the same
  pixels on natural-like, flat, two-valued, narrow and clipped images, band by band."""
  from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  smooth = np.clip(rng.normal(120, 30, (S, S, 3)), 0, 255).astype(np.uint8)
  images = [clip(height=S, width=S)[0], smooth, np.full((S, S, 3), 77, np.uint8),
            np.where(rng.random((S, S, 3)) < 0.5, 10, 200).astype(np.uint8),
            rng.integers(100, 104, (S, S, 3), dtype=np.uint8), np.clip(smooth.astype(int) * 3, 0, 255).astype(np.uint8),
            np.stack([smooth[..., 0], np.full((S, S), 9, np.uint8), smooth[..., 2] // 4], -1)]
  for k, array in enumerate(images):
    image = Image.fromarray(array)
    for name, pil in (("Equalize", ImageOps.equalize), ("AutoContrast", ImageOps.autocontrast)):
      np.testing.assert_array_equal(np.asarray(transforms._apply(image, name, None)), np.asarray(pil(image)),
                                    err_msg=f"{name} on image {k}")
  frames = clip(height=S, width=S)
  for seed in range(40):  # the frames as PIL images (Kinetics' crop hands them over) or as an array: the same clip
    from_images = transforms.auto_augment([Image.fromarray(f) for f in frames], np.random.default_rng(seed))
    np.testing.assert_array_equal(from_images, transforms.auto_augment(frames, np.random.default_rng(seed)))
