"""Compiled pixel loops (numba) for a data worker's costliest steps, bit for bit what they replace.

* `resize`: PIL's `Image.resize(..., Image.BILINEAR)` of a box of every frame (Resample.c: antialiased when it
  shrinks, 8-bit fixed point), mirrored or not: the Kinetics train crop (transforms.multiscale_crop).
* `affine`: PIL's `Image.transform(size, Image.AFFINE, matrix, resample, fillcolor=fill)` of every frame, bilinear
  or bicubic per frame (Geometry.c, double precision): AutoAugment's Rotate, ShearX/Y and TranslateYRel.
* `bilinear_crop`: `video.resize_short_side(frames, size, crop=..., mirror=...)` (torch's bilinear, float32),
  rounded to uint8: the SSv2 train crop (transforms.short_side_jitter_crop).

PIL works one pixel of one image at a time. Here a clip is laid out frames innermost, (H, W, 3, T) ("lanes"), so
the same arithmetic runs on all frames at once in vector registers: the same integer sums, or the same doubles in
the same order, rounded as PIL rounds them. No fast-math, so results do not depend on the CPU (tested against
PIL and the numpy resize in tests/test_transforms.py). The first call in a process compiles (a few seconds for
all of them, once per machine) or loads the machine code numba cached beside this file (`cache=True`; a read-only
install caches in the user's cache directory instead).
"""

import functools
import math

import numba
import numpy as np

from xvit_jax.data import video

_JIT = dict(cache=True, nogil=True)


@numba.njit(inline="always")
def _cubic(q1, q2, q3, q4, d):
  """Geometry.c's BICUBIC(v, v1, v2, v3, v4, d), its operations in its order."""
  return q2 + d * ((-q1 + q3) + d * ((2 * (q1 - q2) + q3 - q4) + d * (-q1 + q2 - q3 + q4)))


@numba.njit(**_JIT)
def _to_lanes(clip, frames, top, left, height, width):
  """uint8 (height, width, C, len(frames)) of the region of clip (T, H, W, C)'s `frames` at (top, left)."""
  channels = clip.shape[3]
  lanes = np.empty((height, width, channels, len(frames)), np.uint8)
  for y in range(height):
    for x in range(width):
      for c in range(channels):
        for k in range(len(frames)):
          lanes[y, x, c, k] = clip[frames[k], top + y, left + x, c]
  return lanes


@numba.njit(**_JIT)
def _from_lanes(lanes, out, frames, mirror):
  """out[frames] = the first len(frames) lanes of lanes (H, W, C, n), in out's (T, H, W, C); left to right
  reversed with `mirror`."""
  height, width, channels, _ = lanes.shape
  for y in range(height):
    for x in range(width):
      column = width - 1 - x if mirror else x
      for c in range(channels):
        for k in range(len(frames)):
          out[frames[k], y, column, c] = lanes[y, x, c, k]


@numba.njit(**_JIT)
def _affine_lanes(src, m, bicubic, fill):
  """Geometry.c's ImagingGenericTransform with affine_transform and bilinear_filter32RGB or
  bicubic_filter32RGB, each output pixel of all lanes at once. Pixels whose source point falls outside the
  image keep `fill` (PIL's output starts filled with fillcolor); taps beyond the edges are clamped, which equals
  Geometry.c's row rules (a missing row repeats the one above it, the first row is clipped)."""
  height, width, channels, n = src.shape
  out = np.empty_like(src)
  a0, a1, a2, a3, a4, a5 = m[0], m[1], m[2], m[3], m[4], m[5]
  for y in range(height):
    yc = y + 0.5
    for x in range(width):
      xc = x + 0.5
      xin = a0 * xc + a1 * yc + a2
      yin = a3 * xc + a4 * yc + a5
      if not (xin >= 0.0 and xin < width and yin >= 0.0 and yin < height):
        for c in range(channels):
          for k in range(n):
            out[y, x, c, k] = fill
        continue
      xin -= 0.5
      yin -= 0.5
      fx = math.floor(xin)
      fy = math.floor(yin)
      dx = xin - fx
      dy = yin - fy
      i = int(fx)
      j = int(fy)
      if bicubic:
        x0, x1 = min(max(i - 1, 0), width - 1), min(max(i, 0), width - 1)
        x2, x3 = min(max(i + 1, 0), width - 1), min(max(i + 2, 0), width - 1)
        r0, r1 = src[min(max(j - 1, 0), height - 1)], src[min(max(j, 0), height - 1)]
        r2, r3 = src[min(max(j + 1, 0), height - 1)], src[min(max(j + 2, 0), height - 1)]
        for c in range(channels):
          for k in range(n):
            v1 = _cubic(float(r0[x0, c, k]), float(r0[x1, c, k]), float(r0[x2, c, k]), float(r0[x3, c, k]), dx)
            v2 = _cubic(float(r1[x0, c, k]), float(r1[x1, c, k]), float(r1[x2, c, k]), float(r1[x3, c, k]), dx)
            v3 = _cubic(float(r2[x0, c, k]), float(r2[x1, c, k]), float(r2[x2, c, k]), float(r2[x3, c, k]), dx)
            v4 = _cubic(float(r3[x0, c, k]), float(r3[x1, c, k]), float(r3[x2, c, k]), float(r3[x3, c, k]), dx)
            v = min(max(_cubic(v1, v2, v3, v4, dy), 0.0), 255.0)  # <= 0 -> 0, >= 255 -> 255, else truncated
            out[y, x, c, k] = np.uint8(int(v))
      else:
        x0, x1 = min(max(i, 0), width - 1), min(max(i + 1, 0), width - 1)
        r0, r1 = src[min(max(j, 0), height - 1)], src[min(max(j + 1, 0), height - 1)]
        for c in range(channels):
          for k in range(n):
            p0, p1 = float(r0[x0, c, k]), float(r0[x1, c, k])
            v1 = p0 + (p1 - p0) * dx
            p0, p1 = float(r1[x0, c, k]), float(r1[x1, c, k])
            v2 = p0 + (p1 - p0) * dx
            out[y, x, c, k] = np.uint8(int(v1 + (v2 - v1) * dy))  # truncated, as PIL's (UINT8)v1
  return out


IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# The loops over lanes vectorize when their count is a multiple of 8 (measured here: 8 lanes of bicubic 6.0 ms,
# 7 or 9 lanes 19 and 10 ms), so each filter's frames are padded to a multiple of 8 with repeats.
LANES = 8


def _padded(frames):
  """The frame indices repeated to a multiple of LANES."""
  return np.resize(frames, -(-len(frames) // LANES) * LANES)


def affine(clip, matrix, bicubic, fill=128):
  """Each frame of uint8 clip (T, H, W, 3) as PIL's `Image.fromarray(frame).transform((W, H), Image.AFFINE,
  matrix, resample=BICUBIC if bicubic[t] else BILINEAR, fillcolor=(fill,) * 3)`, bit for bit: uint8 (T, H, W, 3).

  matrix: PIL's six affine coefficients (a, b, c, d, e, f): output pixel centre (x, y) reads the source at
  (a x + b y + c, d x + e y + f). The identity returns `clip` itself (PIL's result equals its input then)."""
  if tuple(float(v) for v in matrix) == IDENTITY:
    return clip
  clip = np.ascontiguousarray(clip)
  bicubic = np.asarray(bicubic, bool)
  m = np.asarray(matrix, np.float64)
  out = np.empty_like(clip)
  for flag in (True, False):
    frames = np.flatnonzero(bicubic == flag)
    if len(frames):
      lanes = _to_lanes(clip, _padded(frames), 0, 0, *clip.shape[1:3])
      _from_lanes(_affine_lanes(lanes, m, flag, np.uint8(fill)), out, frames, False)
  return out


@numba.njit(**_JIT)
def _bilinear_crop(frames, rows, where, at0, at1, w0, w1, yw0, yw1):
  """uint8 (T, out_h, out_w, C): each frame's source `rows` blended along W (float32 a * w0 + b * w1, with a and
  b at flat positions at0, at1 of the row: per output column and channel), then output row y blends wide rows
  where[y] and where[out_h + y] (float32), rounded half to even and clipped. Both loops run over a row's
  columns and channels as one flat axis, so the second vectorizes."""
  num, _, _, channels = frames.shape
  out_h, flat = len(yw0), len(w0)
  out = np.empty((num, out_h, flat // channels, channels), np.uint8)
  wide = np.empty((len(rows), flat), np.float32)
  for t in range(num):
    for r in range(len(rows)):
      line = frames[t, rows[r]].reshape(-1)
      blended = wide[r]
      for j in range(flat):
        blended[j] = np.float32(line[at0[j]]) * w0[j] + np.float32(line[at1[j]]) * w1[j]
    for y in range(out_h):
      top, bottom, row = wide[where[y]], wide[where[out_h + y]], out[t, y].reshape(-1)
      a, b = yw0[y], yw1[y]
      for j in range(flat):
        row[j] = np.uint8(min(max(np.rint(top[j] * a + bottom[j] * b), np.float32(0)), np.float32(255)))
  return out


def bilinear_crop(frames, rows, where, x_taps, y_weights):
  """video.resize_short_side's crop, rounded to uint8 (np.clip(np.rint(.), 0, 255)), from video.crop_taps: `rows`
  the source rows read, `where` (2 * out_h,) each output row's two positions in `rows`, x_taps (xi0, xi1, xw0,
  xw1) per output column, y_weights (yw0, yw1) per output row (float32)."""
  frames = np.ascontiguousarray(frames)
  channels = frames.shape[-1]
  xi0, xi1, xw0, xw1 = x_taps
  yw0, yw1 = y_weights
  at0, at1 = ((np.asarray(i, np.int64)[:, None] * channels + np.arange(channels)).reshape(-1) for i in (xi0, xi1))
  w0, w1 = (np.repeat(np.asarray(w, np.float32), channels) for w in (xw0, xw1))
  return _bilinear_crop(frames, np.asarray(rows, np.int64), np.asarray(where, np.int64), at0, at1, w0, w1,
                        np.asarray(yw0, np.float32), np.asarray(yw1, np.float32))


# --- PIL's resize (libImaging/Resample.c): antialiased bilinear, 8-bit fixed point ------------------------------

_PRECISION_BITS = 32 - 8 - 2


@functools.lru_cache(maxsize=256)
def _pil_coefficients(in_size, out_size):
  """Resample.c's precompute_coeffs (bilinear filter, box (0, in_size)) and normalize_coeffs_8bpc: per output
  index the first source index, the number of taps and int32 (out_size, ksize) weights in fixed point. The
  same double arithmetic in the same order; int() truncates toward zero as C's (int) does."""
  scale = float(np.float32(in_size)) / out_size  # (double)(in1 - in0) / outSize, in0 and in1 C floats
  filterscale = max(scale, 1.0)
  support = 1.0 * filterscale  # the bilinear filter's support
  ksize = int(math.ceil(support)) * 2 + 1
  bounds = np.zeros((out_size, 2), np.int64)
  weights = np.zeros((out_size, ksize), np.int32)
  for xx in range(out_size):
    center = 0.0 + (xx + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size) - xmin
    k = []
    ww = 0.0
    for x in range(xmax):
      arg = (x + xmin - center + 0.5) * ss
      arg = -arg if arg < 0.0 else arg
      w = 1.0 - arg if arg < 1.0 else 0.0
      k.append(w)
      ww += w
    if ww != 0.0:
      k = [w / ww for w in k]
    bounds[xx] = xmin, xmax
    weights[xx, :xmax] = [int(-0.5 + w * (1 << _PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << _PRECISION_BITS))
                          for w in k]
  return bounds, weights


@numba.njit(inline="always")
def _taps(out, line, start, weights, count, acc):
  """out[c, :] = Resample.c's fixed-point sum of `count` taps of lanes line (positions, C, n) from position
  `start`, weighted by int32 `weights`, rounded (the half in the initial sum) and clipped (clip8), per channel."""
  for c in range(line.shape[1]):
    for k in range(line.shape[2]):
      acc[k] = 1 << (_PRECISION_BITS - 1)
    for i in range(count):
      w = weights[i]
      for k in range(line.shape[2]):
        acc[k] += np.int32(line[start + i, c, k]) * w
    for k in range(line.shape[2]):
      v = acc[k] >> _PRECISION_BITS
      out[c, k] = 0 if v < 0 else 255 if v > 255 else v


@numba.njit(**_JIT)
def _resample_rows(src, first, bounds, weights):
  """ImagingResampleHorizontal_8bpc on lanes src (H, W, C, n) for output rows of source rows first, first + 1, ...:
  uint8 (H - first, out_w, C, n)."""
  height, _, channels, n = src.shape
  out = np.empty((height - first, len(bounds), channels, n), np.uint8)
  acc = np.empty(n, np.int32)
  for y in range(height - first):
    for xx in range(len(bounds)):
      _taps(out[y, xx], src[first + y], bounds[xx, 0], weights[xx], bounds[xx, 1], acc)
  return out


@numba.njit(**_JIT)
def _resample_columns(src, shift, bounds, weights):
  """ImagingResampleVertical_8bpc on lanes src (H, W, C, n), source row indices less `shift`: uint8 (out_h, W, C, n)."""
  _, width, channels, n = src.shape
  out = np.empty((len(bounds), width, channels, n), np.uint8)
  acc = np.empty(n, np.int32)
  for yy in range(len(bounds)):
    for x in range(width):
      _taps(out[yy, x], src[:, x], bounds[yy, 0] - shift, weights[yy], bounds[yy, 1], acc)
  return out


def resize(frames, box, size, mirror=False):
  """Each frame's crop box = (left, top, width, height) of uint8 frames (T, H, W, 3), as PIL's
  `Image.fromarray(frame[top:top + height, left:left + width]).resize((size, size), Image.BILINEAR)` (antialiased
  when it shrinks), then `transpose(FLIP_LEFT_RIGHT)` with `mirror`: uint8 (T, size, size, 3), bit for bit."""
  left, top, width, height = box
  if (width, height) == (size, size):  # Image.resize returns a copy when the size is the image's
    return np.ascontiguousarray(video.crop_view(frames, (top, left, size, size), mirror))
  frames = np.ascontiguousarray(frames)
  out = np.empty((len(frames), size, size, frames.shape[3]), np.uint8)
  index = np.arange(len(frames))
  lanes = _to_lanes(frames, _padded(index), top, left, height, width)
  rows, row_weights = _pil_coefficients(height, size)
  if width != size and height - size > max(2 * (width - size), 0):
    # Pillow 13 resamples vertically first when the height shrinks much more than the width
    # (python-pillow/Pillow#9549); this rule is measured against Pillow 13.0.0 on 2,980 random sizes.
    lanes = _resample_rows(_resample_columns(lanes, 0, rows, row_weights), 0, *_pil_coefficients(width, size))
  else:
    first = 0
    if width != size:  # the horizontal pass, over the source rows the vertical pass reads
      first, last = int(rows[0, 0]), int(rows[-1, 0] + rows[-1, 1])
      lanes = _resample_rows(lanes[:last], first, *_pil_coefficients(width, size))
    if height != size:
      lanes = _resample_columns(lanes, first, rows, row_weights)
  _from_lanes(lanes, out, index, mirror)
  return out
