"""The whole config, assembled from the sections each module owns, and the start-up checks over it.

Sections and their owners (defaults and checks next to the code that reads them):
  top-level run fields  here           model      xvit_jax/models        data, augment  xvit_jax/data
  eval                  evaluate.py    mesh       sharding.py            optimizer      optim.py
Config files (configs/*.py) start from `base_config()` and change what their experiment needs; `check()`
runs before anything is built, so a wrong value stops the run with one line naming the field.
"""

import importlib.util
import math
import os

import ml_collections
from ml_collections import config_dict

from xvit_jax import data, evaluate, fields, models, optim, profiling, sharding

DTYPES = ("float32", "bfloat16", "float16")


def base_config():
  """ViT-B/16 X-ViT on 8 frames at 224 (the paper's model), on the built-in synthetic task."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 64  # global, over all devices and processes
  c.total_steps = 1000
  c.log_every = 50
  c.eval_every = 500  # 0: only at the end
  c.checkpoint_every = 0  # 0: only at the end (and on SIGTERM)
  c.checkpoint_keep = 3  # the newest kept; the best by eval/top1 is kept too
  # The schedule in epochs (a recipe's; optim.resolve_schedule): total_steps, warmup_steps, eval_every and
  # checkpoint_every that are None are these epochs x steps_per_epoch, itself floor(data.train_videos / batch_size).
  c.epochs = config_dict.placeholder(int)
  c.warmup_epochs = config_dict.placeholder(int)
  c.eval_every_epochs = config_dict.placeholder(int)
  c.checkpoint_every_epochs = config_dict.placeholder(int)
  c.steps_per_epoch = config_dict.placeholder(int)
  c.dtype = "float32"  # compute dtype; parameters and optimizer state stay float32
  c.nonfinite = "stop"  # a step with NaN/Inf loss or gradients is never applied; stop: end the run, skip: go on
  c.grad_accum_steps = 1  # micro-batches per step: each device runs batch_size / (shards * this) clips at once
  c.init_from = ""  # pretrained weights: a checkpoint dir, Google ViT .npz, timm/official state dict; "scratch": none
  c.requires_init = False  # True (the paper recipes): a fresh training run must set init_from (weights or "scratch")
  c.peak_flops_per_device = 0.0  # bf16 FLOP/s of one device, for train/mfu; 0: chips.py's table by device kind
  c.profile_steps = ""  # "START:COUNT": a jax.profiler trace of those steps in workdir/profile (profiling.py)
  c.model = models.default_config()
  c.data = data.default_config()
  c.data.train_videos = config_dict.placeholder(int)  # the training split's nominal size, for steps_per_epoch only
  c.augment = data.default_augment_config()
  c.eval = evaluate.default_config()
  c.mesh = sharding.default_config()
  c.optimizer = optim.default_config()
  return c


def check(config, num_devices):
  """Raises UserError (one line naming the field) for any value the run could not use, the derived fields
  as optim.resolve_schedule fills them in. num_devices None (--mode=config): the checks that need no device."""
  config, _ = optim.resolve_schedule(config)
  for field in ("batch_size", "total_steps", "grad_accum_steps", "checkpoint_keep"):
    fields.positive_int(config, field)
  fields.one_of(config, "dtype", DTYPES)
  if config.nonfinite not in ("stop", "skip"):
    fields.fail("nonfinite", config.nonfinite, "stop (end the run at the first NaN/Inf step) or skip (count it, go on)")
  fields.non_negative(config, "log_every", "eval_every", "checkpoint_every")
  peak = fields.find(config, "peak_flops_per_device")
  if peak is not None and (not isinstance(peak, (int, float)) or isinstance(peak, bool) or not 0 <= peak < math.inf):
    fields.fail("peak_flops_per_device", peak, "a number of FLOP/s per device > 0 (e.g. 989e12), or 0: from the "
                "table of device kinds in xvit_jax/chips.py")
  profiling.steps(config)
  models.check_config(config)
  data.check_config(config)
  evaluate.check_config(config)
  optim.check_config(config)
  if num_devices is not None:
    sharding.check_config(config, num_devices)


def import_file(path, *, next_to):
  """The Python module in `path`, relative to the folder of the file `next_to` (absolute paths too).

  How a config file imports its shared base whatever the working directory: configs/ is loaded by
  path, not from sys.path, so `common = config_lib.import_file("common.py", next_to=__file__)`."""
  path = os.path.join(os.path.dirname(os.path.abspath(next_to)), path)
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"xvit_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
