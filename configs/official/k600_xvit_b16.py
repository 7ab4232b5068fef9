"""xvit_b16_16_k600.pth: 16 frames, shift within 8-frame segments, 1/8 of the channels from each neighbour."""

from xvit_jax import config_lib

common = config_lib.import_file("../common.py", next_to=__file__)


def get_config():
  c = common.official_xvit_b16(num_classes=600, shift_segment=8, shift_div=8)
  c.optimizer.weight_decay, c.optimizer.warmup_start_lr, c.optimizer.label_smoothing = 1e-5, 0.01, 0.3
  c.data.label_names = "kinetics600"
  c.eval.sampling, c.eval.stride, c.eval.temporal_views = "dense", 16, 1  # 16x16 from frame 0; README: also 2
  return c
