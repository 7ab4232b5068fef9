"""Video decoding (PyAV) and the official test-time views: frame sampling, resize, crops.

numpy and PyAV only (no jax), so dataset preparation and data workers can use it. "Reference" is
shared/reference/xvit.md: section 5.1 (normalisation), 5.2 (Kinetics dense sampling, resize, 3 crops),
5.3 (SSv2 segment sampling) and 8.1 item 11 (short side -> crop size, bilinear without antialias).
"""

import io
import math
import os

import av
import numpy as np
import simplejpeg

from xvit_jax.errors import UserError


# Limits on what a video's header may claim, checked before decoding (files from the internet are data: a
# forged header must not make us allocate what it says). 8192 x 8192 is over 8K UHD (7680 x 4320); a million
# frames is over 9 hours at 30 fps; a whole-video decode keeps every frame, so it has a budget in bytes
# (a 10 s Kinetics clip at 1080p is 1.9 GB, one at 256 px 24 MB); long videos are streamed (predict --stride).
MAX_FRAME_PIXELS = 8192 * 8192
MAX_FRAMES = 1_000_000
MAX_DECODED_BYTES = 8 << 30


def check_stream(stream, fail):
  """Raises fail(reason) if a video stream's header claims a frame larger than MAX_FRAME_PIXELS or more than
  MAX_FRAMES frames. Returns (width, height, claimed frames: 0 when the container does not say)."""
  width, height = stream.codec_context.width, stream.codec_context.height
  if width * height > MAX_FRAME_PIXELS:
    raise fail(f"its header claims frames of {width}x{height} pixels, over the limit of {MAX_FRAME_PIXELS:,}")
  claimed = max(stream.frames or 0, 0)
  if claimed > MAX_FRAMES:
    raise fail(f"its header claims {claimed:,} frames, over the limit of {MAX_FRAMES:,}")
  return width, height, claimed


def _source(path_or_bytes, name):
  """(what av.open reads, the label errors name) of a path (str or os.PathLike) or an encoded file (bytes)."""
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    return io.BytesIO(bytes(path_or_bytes)), name or f"<{len(path_or_bytes)} bytes>"
  return os.fspath(path_or_bytes), name or os.fspath(path_or_bytes)


def _failure(label):
  return lambda reason: UserError(f"cannot decode video {label}: {' '.join(str(reason).split())}")


def iter_frames(path_or_bytes, *, name=None, size=None, max_bytes=None):
  """The frames of the first video stream as RGB uint8 (H, W, 3), one at a time: memory for one frame,
  whatever the video's length or resolution (dataset preparation streams through this).

  size: (height, width) to resize every frame to (FFmpeg's area filter, from the decoded picture, so a
  1080p source never exists as full-size RGB); None keeps the size. max_bytes: a budget for all the frames
  together (checked against the header's claim before the first frame, then as frames come). Failures as
  `decode`, raised when met; a frame size that changes within the video is one.
  """
  source, label = _source(path_or_bytes, name)
  fail = _failure(label)
  try:
    with av.open(source, mode="r") as container:
      streams = container.streams.video
      if not streams:
        raise fail("no video stream")
      width, height, claimed = check_stream(streams[0], fail)
      if max_bytes is not None and claimed * width * height * 3 > max_bytes:
        raise _over_budget(fail, claimed, width, height, max_bytes)
      streams[0].thread_type = "AUTO"
      shape, count = None, 0
      for frame in container.decode(streams[0]):
        if frame.width * frame.height > MAX_FRAME_PIXELS:
          raise fail(f"a frame of {frame.width}x{frame.height} pixels is over the limit of {MAX_FRAME_PIXELS:,}")
        if shape is not None and (frame.height, frame.width) != shape:
          raise fail(f"frame size changes within the video [{shape}, {(frame.height, frame.width)}]")
        shape, count = (frame.height, frame.width), count + 1
        if count > MAX_FRAMES:
          raise fail(f"it has more than {MAX_FRAMES:,} frames")
        if max_bytes is not None and count * frame.width * frame.height * 3 > max_bytes:
          raise _over_budget(fail, count, frame.width, frame.height, max_bytes)
        if size is None:
          yield frame.to_ndarray(format="rgb24")
        else:
          yield frame.to_ndarray(width=size[1], height=size[0], format="rgb24", interpolation="AREA")
      if not count:
        raise fail("no frames decoded")
  except UserError:
    raise
  except av.FFmpegError as e:
    raise fail(e.strerror or e) from None
  except (OSError, EOFError, ValueError) as e:  # raised by Python file objects and numpy conversion
    raise fail(getattr(e, "strerror", None) or e) from None


def decode(path_or_bytes, *, name=None):
  """All frames of the first video stream as RGB uint8 (N, H, W, 3).

  `path_or_bytes` is a path (str or os.PathLike) or the encoded file (bytes); `name` replaces the path in
  error messages (e.g. the record a byte string came from). Every failure (missing file, not a video,
  corrupt or truncated data, no decodable frame, a header claiming more than the limits above, frames
  that would take more than MAX_DECODED_BYTES) raises UserError with one line naming the video, before
  the memory is taken. A file cut short after its first frames can decode to fewer frames without error
  (the container cannot always tell); that is not detected here.
  """
  return np.stack(list(iter_frames(path_or_bytes, name=name, max_bytes=MAX_DECODED_BYTES)))


def _over_budget(fail, frames, width, height, max_bytes):
  return fail(f"{frames:,} frames of {width}x{height} pixels take {frames * width * height * 3 / 2**30:.3g} GiB "
              f"decoded, over the limit of {max_bytes / 2**30:.3g} GiB for a whole video")


class JpegFrames:
  """The frames of a video stored as JPEG images (the prepared datasets' format since 2.0.0), decoded only
  when indexed: `frames[indices]` -> uint8 (len(indices), H, W, 3), each distinct frame decoded once.

  data: the JPEG files one after another; ends: where each ends in `data` (int, (N,)). A frame that is not
  a readable JPEG, claims more than MAX_FRAME_PIXELS, or differs in size from the others raises UserError
  naming the video `name` and the frame, when it is read.
  """

  def __init__(self, data, ends, name):
    self.data, self.ends, self.name = memoryview(data), np.asarray(ends, np.int64), name
    if self.ends.ndim != 1 or np.any(np.diff(self.ends) <= 0) or (len(self.ends) and (
        self.ends[0] <= 0 or self.ends[-1] != len(self.data))):
      raise UserError(f"cannot decode video {name}: its frame offsets do not cut its {len(self.data):,} bytes")

  def __len__(self):
    return len(self.ends)

  def _jpeg(self, i):
    start = int(self.ends[i - 1]) if i else 0
    return self.data[start:int(self.ends[i])]

  def _fail(self, i, reason):
    return UserError(f"cannot decode video {self.name}: frame {i}: {' '.join(str(reason).split())}")

  def __getitem__(self, indices):
    indices = np.asarray(indices, np.int64)
    unique, inverse = np.unique(indices, return_inverse=True)
    shape = None
    for i in unique:  # every header first: a forged size is refused before memory is taken
      try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(self._jpeg(int(i)))
      except ValueError as e:
        raise self._fail(int(i), e) from None
      if height * width > MAX_FRAME_PIXELS:
        raise self._fail(int(i), f"it claims {width}x{height} pixels, over the limit of {MAX_FRAME_PIXELS:,}")
      if shape not in (None, (height, width)):
        raise UserError(f"cannot decode video {self.name}: frame size changes within the video "
                        f"[{shape}, {(height, width)}]")
      shape = (height, width)
    out = np.empty((len(unique), *shape, 3), np.uint8)
    for k, i in enumerate(unique):
      try:
        simplejpeg.decode_jpeg(self._jpeg(int(i)), colorspace="RGB", buffer=out[k])
      except ValueError as e:
        raise self._fail(int(i), e) from None
    return out[inverse.reshape(indices.shape)]


MIN_FRAMES = 3  # a video with fewer frames is unreadable: the official loaders skip it (reference 5.2)


def check_readable(num_video_frames, name):
  """UserError naming the video `name` if it has fewer than MIN_FRAMES frames."""
  if num_video_frames < MIN_FRAMES:
    raise UserError(f"video {name} has {num_video_frames} frame(s); at least {MIN_FRAMES} are needed")


def _check_length(num_video_frames):
  if num_video_frames < 1:
    raise UserError(f"cannot sample frames from a video with {num_video_frames} frames")


def _torch_linspace_f32(start, end, steps):
  """torch.linspace(start, end, steps) for float32 as torch's CPU kernel writes it (scalar path)."""
  start, end = np.float32(start), np.float32(end)
  if steps == 1:
    return np.array([start], np.float32)
  step = (end - start) / np.float32(steps - 1)
  i = np.arange(steps)
  from_start = start + step * i.astype(np.float32)
  from_end = end - step * (steps - 1 - i).astype(np.float32)
  return np.where(i < steps // 2, from_start, from_end)


def dense_indices(num_video_frames, num_frames, stride, *, clip_index, num_clips):
  """Kinetics test sampling (reference 5.2): `num_frames` indices spread over num_frames*stride frames.

  The span starts at max(len - span, 0) * clip_index / num_clips, so with one clip it starts at frame
  0 (not centred). Indices = linspace(start, start + span - 1, num_frames) in float32 (as torch does),
  clamped to [0, len - 1] and truncated to int; short videos repeat their last frame.
  """
  _check_length(num_video_frames)
  span = num_frames * stride
  start = max(num_video_frames - span, 0) * clip_index / num_clips
  index = _torch_linspace_f32(start, start + span - 1, num_frames)
  return np.clip(index, 0, num_video_frames - 1).astype(np.int64)


def segment_indices(num_video_frames, num_frames, *, view):
  """SSv2 test sampling (reference 5.3): one frame per segment of (len - 1) / num_frames frames.

  Segment i spans [round(seg*i), round(seg*(i+1))] with Python's round (half to even, as the
  official np.round). View 0 takes the midpoint (start + end) // 2, view 1 the start, view 2 the end.
  """
  _check_length(num_video_frames)
  if view not in (0, 1, 2):
    raise UserError(f"segment sampling has temporal views 0, 1, 2; got view {view}")
  seg = float(num_video_frames - 1) / num_frames
  start = np.array([round(seg * i) for i in range(num_frames)], np.int64)
  end = np.array([round(seg * (i + 1)) for i in range(num_frames)], np.int64)
  return (start + end) // 2 if view == 0 else start if view == 1 else end


def _linear_taps(n_in, n_out):
  """Source indices and weights of torch's bilinear (align_corners=False) along one axis, in float32."""
  scale = np.float32(n_in) / np.float32(n_out)
  src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
  i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
  return i0, i1, np.float32(1) - w1, w1


def short_side_shape(height, width, size):
  """(height, width) after `resize_short_side` to `size`."""
  if min(height, width) == size:
    return height, width
  if width < height:
    return int(math.floor(float(height) / width * size)), size
  return size, int(math.floor(float(width) / height * size))


def _columns(left, width, mirror):
  """The slice of `width` columns from `left`, right to left when `mirror`."""
  return slice(left + width - 1, left - 1 if left else None, -1) if mirror else slice(left, left + width)


def crop_view(frames, crop=None, mirror=False):
  """A view of frames (T, H, W, C) cut to crop = (top, left, height, width) (None: whole), left to right
  reversed with `mirror`: what `resize_short_side` returns (as float32) for frames already at its size."""
  top, left, height, width = crop or (0, 0, *frames.shape[1:3])
  return frames[:, top:top + height, _columns(left, width, mirror)]


def crop_taps(height, width, size, *, crop=None, mirror=False):
  """What `resize_short_side(frames (T, height, width, C), size, crop=crop, mirror=mirror)` reads, or None when
  frames of that size come back unchanged: (rows, where, (xi0, xi1, xw0, xw1), (yw0, yw1)), with `rows` the
  source rows used, `where` (2 * out_h,) each output row's two positions in `rows` (top taps, then bottom),
  per output column its two source columns and float32 weights (mirrored with `mirror`), per output row its
  float32 weights."""
  new_h, new_w = short_side_shape(height, width, size)
  if (new_h, new_w) == (height, width):
    return None
  top, left, out_h, out_w = crop or (0, 0, new_h, new_w)
  x_taps = tuple(a[_columns(left, out_w, mirror)] for a in _linear_taps(width, new_w))
  yi0, yi1, yw0, yw1 = (a[top:top + out_h] for a in _linear_taps(height, new_h))
  rows, where = np.unique(np.concatenate([yi0, yi1]), return_inverse=True)
  return rows, where, x_taps, (yw0, yw1)


def resize_short_side(frames, size, *, crop=None, mirror=False):
  """Resize (T, H, W, C) so the short side is `size`: float32, as the official test resize (ref. 5.2).

  That is SlowFast's `random_short_side_scale_jitter` with min = max = size: frames whose short side
  already equals `size` come back unchanged; otherwise the long side becomes
  int(math.floor(long / short * size)) (floor, Python float64), and the image is resampled as
  torch.nn.functional.interpolate(mode="bilinear", align_corners=False): half-pixel centres, source
  coordinate (dst + 0.5) * in / out - 0.5 clamped at 0, two taps, NO antialiasing (reference 8.1
  item 11). Separable: along W, then the rows are blended along H, the order of torch's CPU kernel.
  Portrait frames (H > W) keep W = size; square frames count as landscape.

  crop: (top, left, height, width) of the resized frames to return, computed alone from the source rows and
  columns it reads (each output pixel is the same float32 arithmetic as in the whole resize, so the result
  equals resizing then cropping, bit for bit). uint8 frames are gathered before they become float32 (the same
  numbers, fewer bytes). mirror: the result flipped left to right (each column computed as without it, then
  placed mirrored).
  """
  frames = np.asarray(frames)
  taps = crop_taps(*frames.shape[1:3], size, crop=crop, mirror=mirror)
  if taps is None:  # already `size`: the official early return
    return crop_view(frames, crop, mirror).astype(np.float32)
  rows, where, (xi0, xi1, xw0, xw1), (yw0, yw1) = taps
  out_h = len(yw0)
  first, last = int(xi0.min()), int(xi1.max())  # the source columns used
  # channels first, so both passes gather along contiguous axes; products and sums as above, in place
  source = np.ascontiguousarray(frames[:, rows, first:last + 1].transpose(0, 3, 1, 2))  # (T, C, rows, cols)
  wide = np.take(source, xi0 - first, axis=3).astype(np.float32)
  wide *= xw0
  other = np.take(source, xi1 - first, axis=3).astype(np.float32)
  other *= xw1
  wide += other  # (T, C, rows, out_w)
  out = np.take(wide, where[:out_h], axis=2)
  out *= yw0[:, None]
  other = np.take(wide, where[out_h:], axis=2)
  other *= yw1[:, None]
  out += other  # (T, C, out_h, out_w)
  return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def crop_offsets(height, width, size):
  """The (top, left) of the three crops of `three_crops`: left/centre/right, or top/centre/bottom when H > W."""
  if min(height, width) < size:
    raise ValueError(f"frames of {height}x{width} are smaller than the {size}x{size} crop")
  y, x = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
  if height > width:
    return [(0, x), (y, x), (height - size, x)]
  return [(y, 0), (y, x), (y, width - size)]


def three_crops(frames, size):
  """(3, T, size, size, C): left/centre/right crops, or top/centre/bottom when H > W (reference 5.2).

  The centre offset is ceil((L - size) / 2), as SlowFast's `uniform_crop`; the other axis is cut at
  its own centre offset. Square frames count as landscape.
  """
  return np.stack([frames[:, y0:y0 + size, x0:x0 + size] for y0, x0 in crop_offsets(*frames.shape[1:3], size)])


def _view_indices(num_video_frames, *, num_frames, sampling, stride=None, temporal_views=1, spatial_crops=3):
  """The frame indices of each temporal view of the official test views (see `eval_views`)."""
  if spatial_crops not in (1, 3):
    raise UserError(f"spatial_crops must be 1 or 3, got {spatial_crops}")
  if sampling == "dense":
    if stride is None:
      raise UserError("dense sampling needs a stride")
    return [dense_indices(num_video_frames, num_frames, stride, clip_index=k, num_clips=temporal_views)
            for k in range(temporal_views)]
  if sampling == "segment":
    return [segment_indices(num_video_frames, num_frames, view=k) for k in range(temporal_views)]
  raise UserError(f"sampling must be 'dense' or 'segment', got {sampling!r}")


def _picked(frames, kwargs):
  """(the frames of every temporal view, concatenated; how many temporal views)."""
  if not isinstance(frames, JpegFrames):
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
      raise UserError(f"expected decoded frames (N > 0, H, W, 3), got shape {frames.shape}")
  indices = _view_indices(len(frames), **kwargs)
  return frames[np.concatenate(indices)], len(indices)  # each distinct frame decoded once (JpegFrames)


def eval_views(frames, *, num_frames, image_size, sampling, stride=None, temporal_views=1,
               spatial_crops=3):
  """The official test views of one decoded video: float32 pixels (views, num_frames, S, S, 3) in [0, 255].
  `frames`: uint8 (N, H, W, 3), or a video.JpegFrames (then only the sampled frames are decoded).

  views = temporal_views * spatial_crops, ordered view by view, each with its crops (left, centre,
  right). sampling "dense" (Kinetics, needs `stride`) or "segment" (SSv2, at most 3 temporal views).
  Per temporal view: pick frames, resize the short side to `image_size` (in float32, as the official code),
  then crop (reference 5.2, 5.3, 8.1 item 11); the official code resizes normalised floats, the device
  normalises after (xvit_jax.preprocess.normalize): the same numbers within float32 rounding, as resizing
  is linear. spatial_crops=1 takes the centre crop of that same resize (the official Kinetics single-crop
  mode resizes the short side to TRAIN_JITTER_SCALES[0] first instead). Predict cuts its views here; evaluation
  ships `view_windows` and resizes on the device (xvit_jax.preprocess.eval_views), the same numbers.
  """
  kwargs = dict(num_frames=num_frames, sampling=sampling, stride=stride, temporal_views=temporal_views,
                spatial_crops=spatial_crops)
  picked, count = _picked(frames, kwargs)
  views = np.empty((count * spatial_crops, num_frames, image_size, image_size, 3), np.float32)
  for k in range(count):
    clip = resize_short_side(picked[k * num_frames:(k + 1) * num_frames], image_size)
    offsets = crop_offsets(*clip.shape[1:3], image_size)
    for c, (y0, x0) in enumerate(offsets if spatial_crops == 3 else offsets[1:2]):
      views[k * spatial_crops + c] = clip[:, y0:y0 + image_size, x0:x0 + image_size]  # each crop copied once
  return views


def window_size(short_side):
  """The side of `view_windows`' windows that holds any crop of a video whose short side is at most
  `short_side` (prepared datasets: 256): a crop of S resized pixels reads at most short_side + 3 source
  rows or columns (S times the scale, which is at most short_side / S on either axis plus a rounding, and
  two taps)."""
  return short_side + 4


def _window_taps(taps, start, length, window, name):
  """One axis of a view: the taps of its `length` output pixels from `start`, as indices into a window of
  `window` source pixels (i0, i1 int32 (length, 2) stacked; weights float32 (length, 2)), and the window's
  first source pixel. UserError naming the video if the taps span more than `window` pixels."""
  i0, i1, w0, w1 = (a[start:start + length] for a in taps)
  lo, hi = int(i0.min()), int(i1.max())
  if hi - lo + 1 > window:
    raise UserError(f"{name}: a view reads {hi - lo + 1} source pixels, more than eval windows of {window} hold "
                    f"(frames with a short side over {window - 4}); prepare the dataset again with "
                    "python -m xvit_jax.data.prepare")
  return np.stack([i0 - lo, i1 - lo], -1).astype(np.int32), np.stack([w0, w1], -1).astype(np.float32), lo


def _identity_taps(n):
  i = np.arange(n)
  return i, i, np.ones(n, np.float32), np.zeros(n, np.float32)


def view_windows(frames, *, num_frames, image_size, sampling, stride=None, temporal_views=1, spatial_crops=3,
                 window, name="video"):
  """`eval_views` before its resize, for the device to finish (xvit_jax.preprocess.eval_views): per view the uint8
  window of source pixels its crop reads and the resize's taps into it. Returns {"video": uint8 (views,
  num_frames, window, window, 3) (zero-padded past the frame), "rows"/"cols": int32 (views, S, 2), each output
  row's (column's) two source indices in the window, "row_weights"/"col_weights": float32 (views, S, 2), their
  weights}. The device's views equal `eval_views`' within float32 rounding, from a third of the bytes (uint8,
  and no float32 copies of three overlapping crops). `window`: `window_size` of the frames' largest short
  side; UserError naming `name` if a crop reads more.
  """
  kwargs = dict(num_frames=num_frames, sampling=sampling, stride=stride, temporal_views=temporal_views,
                spatial_crops=spatial_crops)
  picked, count = _picked(frames, kwargs)
  height, width = picked.shape[1:3]
  new_h, new_w = short_side_shape(height, width, image_size)
  same = (new_h, new_w) == (height, width)  # the official early return: no resize
  taps_y = _identity_taps(height) if same else _linear_taps(height, new_h)
  taps_x = _identity_taps(width) if same else _linear_taps(width, new_w)
  offsets = crop_offsets(new_h, new_w, image_size)
  offsets = offsets if spatial_crops == 3 else offsets[1:2]
  views = count * len(offsets)
  out = {"video": np.zeros((views, num_frames, window, window, 3), np.uint8),
         "rows": np.empty((views, image_size, 2), np.int32), "row_weights": np.empty((views, image_size, 2), np.float32),
         "cols": np.empty((views, image_size, 2), np.int32), "col_weights": np.empty((views, image_size, 2), np.float32)}
  for c, (y0, x0) in enumerate(offsets):  # view k * crops + c: temporal view k, crop c
    every_k = slice(c, None, len(offsets))
    out["rows"][every_k], out["row_weights"][every_k], top = _window_taps(taps_y, y0, image_size, window, name)
    out["cols"][every_k], out["col_weights"][every_k], left = _window_taps(taps_x, x0, image_size, window, name)
    part = picked[:, top:top + window, left:left + window]
    out["video"][every_k, :, :part.shape[1], :part.shape[2]] = part.reshape(count, num_frames, *part.shape[1:])
  return out


def unresized_view(clip):
  """A clip (T, S, S, 3) as one view of `view_windows`, its own window with taps that keep every pixel: what the
  device makes of it is the clip, normalised (the synthetic task's eval clips)."""
  clip = np.asarray(clip, np.uint8)
  rows, weights, _ = _window_taps(_identity_taps(clip.shape[1]), 0, clip.shape[1], clip.shape[1], "clip")
  cols, col_weights, _ = _window_taps(_identity_taps(clip.shape[2]), 0, clip.shape[2], clip.shape[2], "clip")
  return {"video": clip[None], "rows": rows[None], "row_weights": weights[None], "cols": cols[None],
          "col_weights": col_weights[None]}


def dense_random_indices(num_video_frames, num_frames, stride, rng):
  """Kinetics train sampling (reference 5.2): a span of num_frames*stride frames starting uniformly in
  [0, max(len - span, 0)], indices spread over it as in `dense_indices`."""
  _check_length(num_video_frames)
  span = num_frames * stride
  start = rng.uniform(0, max(num_video_frames - span, 0))
  index = _torch_linspace_f32(start, start + span - 1, num_frames)
  return np.clip(index, 0, num_video_frames - 1).astype(np.int64)


def segment_random_indices(num_video_frames, num_frames, rng):
  """SSv2 / EPIC train sampling (reference 5.3): one random frame in each segment [start, end], inclusive."""
  _check_length(num_video_frames)
  seg = float(num_video_frames - 1) / num_frames
  start = np.array([round(seg * i) for i in range(num_frames)], np.int64)
  end = np.array([round(seg * (i + 1)) for i in range(num_frames)], np.int64)
  return rng.integers(start, end + 1)
