"""Train-time augmentation of one clip (reference 5.1-5.3), synchronized over its frames; mixup of a group.

numpy, Pillow and compiled loops that reproduce Pillow's bit for bit (xvit_jax.data.kernels; no jax), for data
workers. Every random choice is drawn once per clip from an explicit np.random.Generator and applied alike to
all frames (reference 5.1), so the same seed gives the same clip. The only per-frame draw is AutoAugment's
resampling filter for geometric ops, as the official code does. Frames stay uint8 (T, H, W, 3): what needs
normalised values (the erasing box's mid-grey, mixup's blend) is drawn here and applied on the device
(xvit_jax.preprocess).

Differences from the official loaders (kinetics.py, ssv2.py) that remain:
  * Order. The official code runs AutoAugment first, on the decoded frames at full resolution
    (short side ~256), then the spatial crop/resize. `augment_clip` crops first and runs AutoAugment on
    the S x S crop (cheaper): rotation centres, the TranslateYRel distance (a fraction of the height)
    and the fill regions refer to the crop instead of the whole frame.
  * SSv2's official resize works on normalised floats; `short_side_jitter_crop` rounds the resized
    frames back to uint8 (an error of at most 0.5/255 before normalisation).
  * Random numbers come from numpy's Generator, not Python's `random`/torch, so no draw matches the
    official stream; the distributions are the same.
"""

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from xvit_jax.data import kernels, video

# --- spatial sampling --------------------------------------------------------------------------------

SCALES = (1, 0.875, 0.75, 0.66)


def crop_pairs(height, width, size, scales=SCALES, max_distort=1):
  """TSN's candidate (crop_w, crop_h): int(short * s), snapped to `size` when |side - size| < 3."""
  sides = [int(min(height, width) * s) for s in scales]
  sides = [size if abs(side - size) < 3 else side for side in sides]
  return [(sides[j], sides[i]) for i in range(len(sides)) for j in range(len(sides))
          if abs(i - j) <= max_distort]


def fix_offsets(height, width, crop_w, crop_h):
  """TSN's `fill_fix_offset(more_fix_crop=True)`: the 13 (x, y) corners on a 4 x 4 grid of steps."""
  w, h = (width - crop_w) // 4, (height - crop_h) // 4
  grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
          (1, 1), (3, 1), (1, 3), (3, 3)]
  return [(i * w, j * h) for i, j in grid]


def multiscale_box(height, width, size, rng):
  """The box (x, y, crop_w, crop_h) that `multiscale_crop` cuts: one pair, then one of 13 offsets."""
  pairs = crop_pairs(height, width, size)
  crop_w, crop_h = pairs[rng.integers(len(pairs))]
  offsets = fix_offsets(height, width, crop_w, crop_h)
  x, y = offsets[rng.integers(len(offsets))]
  return x, y, crop_w, crop_h


def multiscale_crop(frames, rng, size, flip_p=0.0):
  """Kinetics train crop, the official `random_scale_and_resize` (reference 5.2): uint8 (T, size, size, 3).

  Crop the `multiscale_box` (aspect ratio may change) and resize every frame to size x size with PIL
  bilinear (PIL's resize antialiases when it shrinks), as the official code does on PIL images: PIL's own
  arithmetic, bit for bit, over all frames at once (`kernels.resize`). With flip_p > 0 the clip's flip is drawn
  next and done while resizing: the pixels of `flip(multiscale_crop(frames, rng, size), rng, flip_p)`.
  """
  height, width = frames.shape[1:3]
  x, y, crop_w, crop_h = multiscale_box(height, width, size, rng)
  return kernels.resize(frames, (x, y, crop_w, crop_h), size, mirror=_draw_flip(rng, flip_p))


def short_side_jitter_crop(frames, rng, size, short_side_range=(256, 320), flip_p=0.0):
  """SSv2 train crop (reference 5.3): short side to a random length, then a random size x size crop.

  As SlowFast: length = int(round(uniform(low, high))) (so each end is half as likely as an inner
  value), resized as `video.resize_short_side` (torch bilinear, no antialias); the crop offset is
  randint(0, L - size) with the upper bound excluded, 0 when L == size. Returns uint8: the float32 resize
  rounded (`kernels.bilinear_crop`, which computes only the crop). With flip_p > 0 the clip's flip is drawn
  next and the crop is resized mirrored: `flip` of the crop, bit for bit.
  """
  low, high = short_side_range
  length = int(round(rng.uniform(low, high)))
  height, width = video.short_side_shape(*frames.shape[1:3], length)
  if min(height, width) < size:
    raise ValueError(f"frames of {height}x{width} are smaller than the {size}x{size} crop")
  y = int(rng.integers(0, height - size)) if height > size else 0
  x = int(rng.integers(0, width - size)) if width > size else 0
  mirror = _draw_flip(rng, flip_p)
  taps = video.crop_taps(*frames.shape[1:3], length, crop=(y, x, size, size), mirror=mirror)  # only the crop
  if taps is None:  # the short side is already `length`
    return np.ascontiguousarray(video.crop_view(frames, (y, x, size, size), mirror))
  return kernels.bilinear_crop(frames, *taps)


def _draw_flip(rng, p):
  return p > 0 and rng.random() < p


def flip(frames, rng, p=0.5):
  """Horizontal flip of the whole clip with probability p (SlowFast `horizontal_flip`). `augment_clip`
  draws it inside the crop instead (the same draw, the same pixels, no strided copy of the clip)."""
  return np.ascontiguousarray(frames[:, :, ::-1]) if rng.random() < p else frames


# --- AutoAugment (timm "v0" ImageNet policy) ---------------------------------------------------------

FILL = (128, 128, 128)
RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)  # drawn per frame for geometric ops
GEOMETRIC = ("ShearX", "ShearY", "Rotate", "TranslateYRel")

# 25 sub-policies of (op, probability, magnitude 0..10), timm's auto_augment_policy_v0.
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)), (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)), (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)), (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)), (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)), (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)), (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)), (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)), (("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)), (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)), (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)), (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)), (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

# magnitude -> op argument, timm's level_to_arg functions (_LEVEL_DENOM = 10); signed ones get a random sign.
_LEVEL = {
    "Rotate": lambda m: m / 10 * 30.0,  # degrees
    "ShearX": lambda m: m / 10 * 0.3, "ShearY": lambda m: m / 10 * 0.3,
    "TranslateYRel": lambda m: m / 10 * 0.45,  # fraction of the height (translate_pct 0.45)
    "Color": lambda m: m / 10 * 1.8 + 0.1,
    "Solarize": lambda m: int(m / 10 * 256), "SolarizeAdd": lambda m: int(m / 10 * 110),
    "Posterize": lambda m: int(m / 10 * 4),  # bits kept; 0 gives a black image, as in timm with old PIL
}


def autoaugment_plan(rng, num_frames):
  """One clip's draws: [(op, argument or None, per-frame filters or None)] for the ops that fire.

  Draw order: the sub-policy; then per op its probability (skipped when p = 1, as timm: it fires when
  u <= p), then the sign of signed arguments, then one filter per frame for geometric ops.
  """
  plan = []
  for name, prob, magnitude in POLICY_V0[rng.integers(len(POLICY_V0))]:
    if prob < 1.0 and rng.random() > prob:
      continue
    arg = _LEVEL[name](magnitude) if name in _LEVEL else None
    if name in GEOMETRIC and rng.random() > 0.5:  # timm's _randomly_negate
      arg = -arg
    filters = None
    if name in GEOMETRIC:
      filters = [RESAMPLE[i] for i in rng.integers(len(RESAMPLE), size=num_frames)]
    plan.append((name, arg, filters))
  return plan


def _lut(name, arg):
  i = np.arange(256)
  if name == "Invert":
    return 255 - i
  if name == "Solarize":  # invert pixels >= threshold
    return np.where(i < arg, i, 255 - i)
  if name == "SolarizeAdd":  # add to pixels < 128, saturating
    return np.where(i < 128, np.minimum(255, i + arg), i)
  return i & ~(2 ** (8 - arg) - 1) if arg < 8 else i  # Posterize (numpy: Pillow >= 10 rejects 0 bits)


def _equalize_lut(histogram):
  """PIL's ImageOps.equalize table of one band's 256-bin histogram, in numpy: bin i -> (step // 2 + the count
  below i) // step, step = (pixels - the last non-empty bin's count) // 255; identity when one bin or step 0."""
  filled = histogram[histogram > 0]
  step = (int(filled.sum()) - int(filled[-1])) // 255 if len(filled) > 1 else 0
  if not step:
    return np.arange(256)
  below = np.concatenate([[0], np.cumsum(histogram)[:-1]])
  return (step // 2 + below) // step


def _autocontrast_lut(histogram):
  """PIL's ImageOps.autocontrast table (no cutoff) of one band: [lo, hi] (the first and last non-empty bins)
  stretched to [0, 255], int() of ix * scale + offset in float64, clipped; identity when hi <= lo."""
  filled = np.flatnonzero(histogram)
  lo, hi = (int(filled[0]), int(filled[-1])) if len(filled) else (255, 0)
  if hi <= lo:
    return np.arange(256)
  scale = 255.0 / (hi - lo)
  offset = -lo * scale
  return np.clip(np.trunc(np.arange(256) * scale + offset), 0, 255).astype(np.int64)


def _histogram_lut(image, band_lut):
  """`image` through the table band_lut(histogram) of each of its bands (Equalize, AutoContrast)."""
  bands = np.asarray(image.histogram(), np.int64).reshape(-1, 256)
  return image.point(np.concatenate([band_lut(h) for h in bands]).tolist())


def affine_matrix(name, arg, width, height):
  """PIL's affine coefficients (a, b, c, d, e, f) of a geometric op on a width x height image: timm's shear and
  translate matrices, and `Image.rotate(arg)`'s (about the centre, its terms rounded to 15 decimals and summed as
  PIL sums them). Output pixel centre (x, y) reads the source at (a x + b y + c, d x + e y + f)."""
  if name == "Rotate":
    angle = -math.radians(arg % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = width / 2.0, height / 2.0
    return a, b, a * -cx + b * -cy + 0.0 + cx, d, e, d * -cx + e * -cy + 0.0 + cy
  return {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
          "TranslateYRel": (1, 0, 0, 0, 1, arg * height)}[name]


def _stack(images):
  """uint8 (T, H, W, 3) of PIL images, each copied once."""
  out = np.empty((len(images), images[0].size[1], images[0].size[0], 3), np.uint8)
  for t, image in enumerate(images):
    out[t] = np.asarray(image)
  return out


def _geometric(clip, name, arg, filters):
  """A geometric op on uint8 (T, H, W, 3), each frame with its filter: PIL's transform, bit for bit
  (kernels.affine)."""
  matrix = affine_matrix(name, arg, clip.shape[2], clip.shape[1])
  return kernels.affine(clip, matrix, [f == Image.Resampling.BICUBIC for f in filters], FILL[0])


def _apply(image, name, arg):
  """A colour op on one PIL image, as timm's op functions (Equalize and AutoContrast as PIL's ImageOps, their
  tables computed in numpy); the point ops (`_lut`) are applied by auto_augment."""
  if name == "Color":
    return ImageEnhance.Color(image).enhance(arg)
  if name == "Equalize":
    return _histogram_lut(image, _equalize_lut)
  return _histogram_lut(image, _autocontrast_lut)  # AutoContrast


def auto_augment(frames, rng):
  """timm AutoAugment "v0" (ImageNet) on uint8 frames, synchronized over the clip (reference 5.1).

  One sub-policy, probability draw, sign and magnitude per clip; the resampling filter of geometric
  ops is bilinear or bicubic at random per frame; fill (128, 128, 128). The official hparams set
  translate_const = 100, but v0 only uses TranslateYRel (45% of the height at magnitude 10), so it
  has no effect. Equalize and AutoContrast use each frame's own histogram (as PIL per frame).
  `frames`: uint8 (T, H, W, 3) or a list of PIL images. Colour ops run on PIL images, geometric ones on the
  whole clip as an array (`kernels.affine`, PIL's arithmetic); the clip changes form only between the two.
  """
  clip = frames
  for name, arg, filters in autoaugment_plan(rng, len(frames)):
    if name in GEOMETRIC:
      clip = _geometric(clip if isinstance(clip, np.ndarray) else _stack(clip), name, arg, filters)
    else:
      images = [Image.fromarray(f) for f in clip] if isinstance(clip, np.ndarray) else clip
      if name in ("Invert", "Solarize", "SolarizeAdd", "Posterize"):
        table = np.tile(_lut(name, arg), 3).tolist()
        clip = [image.point(table) for image in images]
      else:
        clip = [_apply(image, name, arg) for image in images]
  return clip if isinstance(clip, np.ndarray) else _stack(clip)


# --- random erasing: drawn here, applied after normalisation on the device (preprocess.erase) -------

NO_BOX = (0, 0, 0, 0)


def erasing_box(height, width, rng, p=0.5, area=(0.02, 1 / 3), min_aspect=0.3):
  """timm RandomErasing's box (top, left, h, w), or None: skipped with probability 1 - p, or when 10
  tries (area fraction ~ U(area), log-aspect ~ U(+-log min_aspect)) give no box inside the image. The box
  is set to 0 (mid-grey) in every normalised frame of the clip (reference 5.3), by preprocess.erase."""
  if rng.random() > p:
    return None
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  for _ in range(10):
    target = rng.uniform(*area) * height * width
    aspect = math.exp(rng.uniform(*log_aspect))
    h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if w < width and h < height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return None


def augment_clip(frames, rng, *, image_size, multiscale=True, short_side_range=(256, 320), flip_p=0.5,
                 autoaugment=True, erasing_p=0.0):
  """One train clip: uint8 (T, H, W, 3) -> (uint8 (T, image_size, image_size, 3), erasing box int32 (4,)).

  In order: spatial (`multiscale_crop` if multiscale else `short_side_jitter_crop`), `flip` (if
  flip_p > 0), `auto_augment` (if enabled), the `erasing_box` (if erasing_p > 0; (0, 0, 0, 0): none),
  which preprocess.erase sets to mid-grey after normalisation on the device. Disabled steps draw nothing
  from `rng`.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
  if multiscale:  # the flip is drawn right after the crop, and done while cropping
    frames = multiscale_crop(frames, rng, image_size, flip_p)
  else:
    frames = short_side_jitter_crop(frames, rng, image_size, short_side_range, flip_p)
  if autoaugment:
    frames = auto_augment(frames, rng)
  box = erasing_box(image_size, image_size, rng, erasing_p) if erasing_p > 0 else None
  return frames, np.array(box or NO_BOX, np.int32)


# --- across clips ------------------------------------------------------------------------------------

def mixup(clips, rng, alpha):
  """Mixup's draws for one group of train clips (dicts with "video", "label"), as the official code mixes
  each GPU's batch (reference 5.4): one lambda ~ Beta(alpha, alpha) and one permutation for the group.
  Clip i gets its partner's row in the group, "mixup_partner" = perm[i], its label "mixup_label" and
  "mixup_lam"; on the device (preprocess.mix) its normalised video becomes lambda * video_i +
  (1 - lambda) * video_perm[i], and the loss mixes the targets alike."""
  lam = np.float32(rng.beta(alpha, alpha))
  perm = rng.permutation(len(clips))
  return [{**clip, "mixup_partner": np.int32(j), "mixup_label": clips[j]["label"], "mixup_lam": lam}
          for clip, j in zip(clips, perm)]
