"""Pixels -> model input, on the device: the one preprocessing definition of train, eval, predict and export.

Clips cross to the device as uint8 pixels and become the model's input inside the jit'd step: `normalize`
(reference 5.1), then for train batches the random erasing box and mixup the host drew (data.transforms); eval
batches carry each view's window of source pixels and the taps of the official test resize, which
`eval_views` applies here (in float32, as the official code). Predict's views are float32 pixels cut on the
host (one video). Doing it here keeps the bytes on the wire a quarter of float32's (eval: a third) and the
arithmetic in one place; the numbers are those the host computed before (normalize bitwise, mixup and the
eval resize within float32 rounding).
"""

import jax
import jax.numpy as jnp
import numpy as np

MEAN = STD = (0.5, 0.5, 0.5)  # of RGB / 255, per channel: input = (rgb / 255 - mean) / std, values in [-1, 1]

# 1/255 = _INV_HI + _INV_LO, _INV_HI with 16 significant bits. XLA turns x / 255 into x * float32(1/255), which
# rounds differently from the division for half the 8-bit values; x * _INV_HI is exact for an 8-bit x, so
# x * _INV_HI + x * _INV_LO rounds once and gives the division's float32 for every integer 0..255 (tested),
# with or without a fused multiply-add.
_INV_HI = np.float32(np.ldexp(np.round(np.ldexp(1 / 255, 23)), -23))
_INV_LO = np.float32(1 / 255 - float(_INV_HI))


def normalize(pixels):
  """RGB pixels in [0, 255] (uint8 or float) -> float32 in [-1, 1] as the official tensor_normalize:
  (x / 255 - 0.5) / 0.5. For integer pixels bitwise numpy's float32 (x / 255 - 0.5) / 0.5; for other
  floats (resized views) within float32 rounding of it."""
  x = jnp.asarray(pixels).astype(jnp.float32)
  scaled = x * jnp.float32(_INV_HI) + x * jnp.float32(_INV_LO)  # x / 255
  return (scaled - jnp.float32(MEAN[0])) / jnp.float32(STD[0])


def erase(video, box):
  """timm RandomErasing on normalised clips (B, T, H, W, C): each clip's box (B, 4) int32 (top, left, h, w;
  h = 0 or w = 0: none) set to 0, mid-grey, in every frame (reference 5.3)."""
  top, left, h, w = (box[:, i, None] for i in range(4))  # (B, 1) each
  rows, cols = jnp.arange(video.shape[2]), jnp.arange(video.shape[3])
  inside = lambda x, start, size: (x >= start) & (x < start + size)
  mask = inside(rows, top, h)[:, :, None] & inside(cols, left, w)[:, None, :]  # (B, H, W)
  return jnp.where(mask[:, None, :, :, None], jnp.zeros((), video.dtype), video)


def mix(video, partner, lam, group):
  """Mixup within each group of `group` consecutive rows of the batch (reference 5.4): row i becomes
  lam_i * video_i + (1 - lam_i) * video_p, p the row `partner[i]` of its own group. Rows of a group are
  gathered within the group only, so a batch whose every device holds whole groups needs no communication."""
  b = video.shape[0]
  grouped = video.reshape(b // group, group, *video.shape[1:])
  others = jax.vmap(lambda clips, index: clips[index])(grouped, partner.reshape(b // group, group))
  lam = lam.astype(video.dtype).reshape((b,) + (1,) * (video.ndim - 1))
  return lam * video + (1 - lam) * others.reshape(video.shape)


def _taps_matrix(index, weight, size):
  """(..., S, 2) source indices and weights -> the (..., S, size) matrix of a two-tap linear resize."""
  hit = index[..., None] == jnp.arange(size, dtype=index.dtype)  # (..., S, 2, size)
  return jnp.sum(jnp.where(hit, weight[..., None], jnp.zeros((), weight.dtype)), axis=-2)


def eval_views(batch):
  """An eval batch as the pipeline made it (data.video.view_windows: {"video": uint8 windows (B, V, T, h, w, 3),
  "rows"/"cols" int32 (B, V, S, 2), "row_weights"/"col_weights" float32 (B, V, S, 2)}) -> the model's input,
  normalised views (B * V, T, S, S, 3): each window resized along its width, then its height (the order of
  the official torch resize) as products with the taps' matrices in float32 (precision HIGHEST: no bfloat16
  passes on TPUs or TF32 on GPUs), the views of data.video.eval_views within float32 rounding."""
  windows = batch["video"]
  b, v, t, h, w, c = windows.shape
  across = _taps_matrix(batch["cols"], batch["col_weights"], w)  # (B, V, S, w)
  down = _taps_matrix(batch["rows"], batch["row_weights"], h)  # (B, V, S, h)
  highest = jax.lax.Precision.HIGHEST
  wide = jnp.einsum("bvthwc,bvxw->bvthxc", windows.astype(jnp.float32), across, precision=highest)
  views = jnp.einsum("bvthxc,bvyh->bvtyxc", wide, down, precision=highest)
  return normalize(views.reshape(b * v, t, *views.shape[3:]))


def train_inputs(batch, mixup_group):
  """A train batch as the pipeline made it ({"video": uint8 (B, T, S, S, 3)}, with "erase" (B, 4) when
  augment.random_erasing is on and "mixup_partner", "mixup_lam" with mixup) -> the model's float32 input:
  normalised, erased, then mixed, the order of the official loaders."""
  video = normalize(batch["video"])
  if "erase" in batch:
    video = erase(video, batch["erase"])
  if "mixup_partner" in batch:
    video = mix(video, batch["mixup_partner"], batch["mixup_lam"], mixup_group)
  return video
