"""xvit_b16_16_ss2.pth: 16 frames, shift over all 16, 1/4 of the channels from each neighbour."""

from xvit_jax import config_lib

common = config_lib.import_file("../common.py", next_to=__file__)


def get_config():
  c = common.official_xvit_b16(num_classes=174, shift_segment=16, shift_div=4)
  c.optimizer.weight_decay, c.optimizer.warmup_start_lr = 1e-4, 0.003
  c.data.label_names = "something_something_v2"
  c.eval.sampling, c.eval.temporal_views = "segment", 2  # segment midpoints, then segment starts
  return c
