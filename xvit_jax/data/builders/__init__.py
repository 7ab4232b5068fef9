"""TFDS builders of the video datasets (manual download), written as ArrayRecord for tfds.data_source.

Prepare one with `python -m xvit_jax.data.prepare --dataset=NAME --manual_dir=DIR --data_dir=DIR`
(see xvit_jax/data/prepare.py), or with TensorFlow installed, `tfds build --imports
xvit_jax.data.builders NAME --manual_dir=DIR --data_dir=DIR --file_format=array_record`. Read it back
without TensorFlow: `tfds.data_source(NAME, data_dir=DIR)[split][i]` is a dict of numpy values:
  frames      bytes, every frame as a JPEG file, one after another (short side 256, or smaller if the
              source was; all source frames), cut by
  frame_ends  int64 (num_frames,), where each frame's JPEG ends in `frames`; decode the frames you sample
              with xvit_jax.data.sources.stored_frames(record)[indices] (uint8 (k, H, W, 3)).
              Datasets prepared before 2026-12 (version 1.0.0) hold `video` instead, an h264 mp4; still read.
  id          bytes, the annotation id (Kinetics {youtube_id}_{start:06d}_{end:06d}, SSv2 id,
              EPIC narration_id)
  num_frames  int32, frames of the video
  label       int64 class index, -1 when unlabelled (Kinetics, SSv2); EPIC-Kitchens-100 has `verb`
              and `noun` instead. Names: tfds.builder(NAME, data_dir=DIR).info.features["label"].names
Importing this package registers the builders with tfds; which name has which builder (and what else a
dataset implies): xvit_jax/data/registry.py.
"""

from xvit_jax.data.builders import epic_kitchens, kinetics, ssv2  # noqa: F401 - registers them with tfds
