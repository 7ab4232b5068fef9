"""The built-in demo: a small X-ViT learns which way an object moves, on a CPU, in minutes.

    python -m xvit_jax.main --config=configs/demo.py --workdir=/tmp/xvit_demo
    python -m xvit_jax.main --config=configs/demo.py --workdir=/tmp/xvit_spatial --config.model.attention=spatial
"""

from xvit_jax import config_lib


def get_config():
  c = config_lib.base_config()
  c.batch_size = 32
  c.total_steps = 1500
  c.log_every = 50
  c.eval_every = 250
  c.dtype = "float32"
  c.data.workers = 0  # synthetic clips are cheap: the main process keeps up, no worker processes to start

  m = c.model
  m.image_size, m.patch_size = 32, 8
  m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim = 64, 4, 4, 128
  m.num_frames, m.num_classes = 8, 4
  m.attention, m.shift_div = "xvit", 4
  m.consensus = "avg"  # the mixing is the only way to see motion (no temporal head)
  m.dropout = 0.0

  c.data.stride, c.eval.stride, c.eval.spatial_crops = 1, 1, 1  # a video file is taken frame by frame, as the clips are made
  c.data.object_size, c.data.speed = 8, 3.0  # 3 px per frame: not a divisor of the 8 px patch
  c.optimizer.learning_rate = 0.03  # the paper's; 0.1 stalls this small model
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 1e-4
  return c
