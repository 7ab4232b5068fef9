"""Model cost from XLA's own cost analysis (no execution, no parameters materialised).

Model FLOPs are what MFU divides by: the forward pass as XLA counts the lowered program (before
optimisation: every multiply-add of every layer, nothing fused away, no rematerialisation), three
times for a train step (forward, and a backward of twice its cost). A compiled train step's own count
differs: it includes the recomputation of remat and counts a loop body (scanned layers, accumulation)
once."""

import jax
import jax.numpy as jnp
from flax import nnx

from xvit_jax.models import create_model

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (gradients of activations and of weights)


def forward_flops(model_cfg, *, batch=1, dtype="float32"):
  """FLOPs of one inference forward pass on `batch` clips, as XLA counts them (2 per multiply-add)."""
  model_cfg = model_cfg.copy_and_resolve_references()
  with model_cfg.unlocked():  # a config written before these fields existed may lack them
    # the model's FLOPs, not remat's recomputation; every block, not a scan's body counted once
    model_cfg.remat, model_cfg.remat_policy, model_cfg.scan_layers = False, "none", False
  graphdef, params = nnx.split(nnx.eval_shape(lambda: create_model(model_cfg, dtype=dtype)))
  video = jax.ShapeDtypeStruct((batch, model_cfg.num_frames, model_cfg.image_size, model_cfg.image_size, 3), jnp.float32)
  forward = jax.jit(lambda p, v: nnx.merge(graphdef, p)(v))
  return float(forward.lower(params, video).cost_analysis()["flops"])


def train_flops_per_clip(model_cfg, *, dtype="float32"):
  """Model FLOPs of one clip of a train step: 3x the forward's (about 1.7 TFLOP for X-ViT-B/16 16x224)."""
  return TRAIN_FLOPS_PER_FORWARD * forward_flops(model_cfg, dtype=dtype)
