"""The built-in task: which way does the object move?

Each clip shows a textured square drifting across a textured background in one of `num_classes`
compass directions (class k: angle 2*pi*k/num_classes, measured with y pointing down), at `speed`
pixels per frame, wrapping around the frame edges. The start position is uniform on the torus, so the
position in any single frame is uniform whatever the class: no single frame, and no bag of frames,
tells the class; only the order of frames does. (Played backwards, a clip of class k is a clip of the
opposite direction: the same frames.) Deterministic in (seed, index), random access, no storage.
"""

import numpy as np


class MovingObjects:
  """A grain random-access source of {"video": uint8 (T, H, W, 3), "label": int32} examples."""

  def __init__(self, size, *, num_frames, image_size, num_classes, object_size, speed, seed):
    self.size, self.num_frames, self.image_size = size, num_frames, image_size
    self.num_classes, self.object_size, self.speed, self.seed = num_classes, object_size, speed, seed
    angles = 2 * np.pi * np.arange(num_classes) / num_classes
    self.velocity = speed * np.stack([np.sin(angles), np.cos(angles)], axis=1)  # (classes, (dy, dx)) px/frame

  def __len__(self):
    return self.size

  def __repr__(self):
    return f"MovingObjects(size={self.size}, num_classes={self.num_classes}, seed={self.seed})"

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self.size:
      raise IndexError(f"index {index} out of range for {self!r}")
    rng = np.random.default_rng([self.seed, index])
    label = int(rng.integers(self.num_classes))
    start = rng.uniform(0, self.image_size, size=2)
    return {"video": self.render(rng, start, self.velocity[label]), "label": np.int32(label)}

  def render(self, rng, start, velocity):
    """Frames of a clip whose object's top-left corner is at start + t * velocity (mod image_size)."""
    size, obj = self.image_size, self.object_size
    background = rng.uniform(0, 64, size=3) + rng.uniform(0, 48, size=(size, size, 3))  # dark, noisy, static
    pattern = rng.uniform(144, 256, size=(2, 3))  # a bright object: two colours in a random texture
    texture = pattern[rng.integers(0, 2, size=(obj, obj))]
    layer = np.zeros((size, size, 3))
    mask = np.zeros((size, size, 1))
    layer[:obj, :obj], mask[:obj, :obj] = texture, 1.0
    frames = []
    for t in range(self.num_frames):
      dy, dx = np.rint(start + t * velocity).astype(int) % size
      moved, moved_mask = (np.roll(a, (dy, dx), axis=(0, 1)) for a in (layer, mask))
      frames.append(moved_mask * moved + (1 - moved_mask) * background)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def from_config(config, split):
  """The train or eval source described by `config.data` (eval clips use a different seed)."""
  data, model = config.data, config.model
  return MovingObjects(
      data.train_size if split == "train" else data.eval_size,
      num_frames=model.num_frames, image_size=model.image_size, num_classes=model.num_classes,
      object_size=data.object_size, speed=data.speed,
      seed=config.seed + (0 if split == "train" else 1_000_003))
