"""Model cost from XLA's own cost analysis (no execution, no parameters materialised)."""

import jax
import jax.numpy as jnp
from flax import nnx

from xvit_jax.models import create_model


def forward_flops(model_cfg, *, batch=1, dtype="float32"):
  """FLOPs of one inference forward pass on `batch` clips, as XLA counts them (2 per multiply-add)."""
  graphdef, params = nnx.split(nnx.eval_shape(lambda: create_model(model_cfg, dtype=dtype)))
  video = jax.ShapeDtypeStruct((batch, model_cfg.num_frames, model_cfg.image_size, model_cfg.image_size, 3), jnp.float32)
  forward = jax.jit(lambda p, v: nnx.merge(graphdef, p)(v))
  cost = forward.lower(params, video).compile().cost_analysis()
  return float(cost["flops"])
