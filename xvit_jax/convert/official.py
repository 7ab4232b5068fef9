"""The official X-ViT PyTorch state dict (1adrianb/video-transformers) <-> xvit_jax parameters.

Parameters are plain nested dicts of numpy arrays, as `nnx.to_pure_dict(state)` gives them, in either layout
(layouts.py: a model with `scan_layers` stores its blocks stacked; the rules name them block by block). Each rule
pairs one of our parameters with one official key and says how the array changes on the way
(reference section 4.3): Linear weights are transposed, the Conv2d weight goes OIHW -> HWIO, tokens and
embeddings lose their leading singleton axes. The official qkv weight (3C, C), rows [q | k | v] each head-major,
is transposed and reshaped to our (C, 3, H, D) kernel (models/attention.py), its bias (3C,) to (3, H, D).
"""

import numpy as np

from xvit_jax import layouts
from xvit_jax.errors import UserError

# Official keys that carry no parameter of ours for this consensus; they are ignored on import.
_UNUSED_WITH_TA_HEAD = ("new_fc.weight", "new_fc.bias")


def _linear(ours, theirs, bias=True, kind="linear"):
  """A Linear's rules; kind "qkv": the fused q, k, v projection, whose arrays also change shape."""
  rules = [(ours + ("kernel",), theirs + ".weight", kind)]
  return rules + ([(ours + ("bias",), theirs + ".bias", "same" if kind == "linear" else "qkv_bias")] if bias else [])


def _norm(ours, theirs):
  return [(ours + ("scale",), theirs + ".weight", "same"), (ours + ("bias",), theirs + ".bias", "same")]


def _block(ours, theirs, qkv_bias=True):
  return (_norm(ours + ("norm1",), theirs + ".norm1")
          + _linear(ours + ("attn", "qkv"), theirs + ".attn.qkv", qkv_bias, "qkv")
          + _linear(ours + ("attn", "proj"), theirs + ".attn.proj") + _norm(ours + ("norm2",), theirs + ".norm2")
          + _linear(ours + ("mlp", "fc1"), theirs + ".mlp.fc1") + _linear(ours + ("mlp", "fc2"), theirs + ".mlp.fc2"))


def rules(model_cfg):
  """[(our parameter path, official key, transform)] for an `xvit` or `spatial` model of this config."""
  b = "base_model"
  out = [(("patch_embed", "kernel"), f"{b}.patch_embed.proj.weight", "conv"),
         (("patch_embed", "bias"), f"{b}.patch_embed.proj.bias", "same"),
         (("cls_token",), f"{b}.cls_token", "token"),
         (("pos_embed",), f"{b}.pos_embed", "token"),
         (("temp_embed",), f"{b}.temp_embed", "temporal")]
  for i in range(model_cfg.num_layers):
    out += _block(("blocks", i), f"{b}.blocks.{i}")
  out += _norm(("norm",), f"{b}.norm")
  if model_cfg.consensus == "avg":
    out += _linear(("head", "fc"), "new_fc")
  else:
    out += [(("head", "cls_token"), "consensus.cls_token", "token")]
    for i in range(model_cfg.head.num_layers):
      out += _block(("head", "encoder", i), f"consensus.temporal_encoder.{i}", qkv_bias=False)
    out += (_norm(("head", "norm"), "consensus.mlp_head.0") + _linear(("head", "fc1"), "consensus.mlp_head.1")
            + _linear(("head", "fc2"), "consensus.mlp_head.4"))
  return out


def to_ours(array, transform, shape):
  if transform == "linear":
    return array.T
  if transform in ("qkv", "qkv_bias"):  # (3C, C) -> (C, 3, H, D); (3C,) -> (3, H, D)
    array = array.T if transform == "qkv" else array
    return array.reshape(shape) if array.size == int(np.prod(shape)) else array
  if transform == "conv":  # (O, I, kH, kW) -> (kH, kW, I, O)
    return array.transpose(2, 3, 1, 0)
  if transform in ("token", "temporal"):  # (1, 1, C), (1, N, C), (1, P, 1, C) -> (C,), (N, C), (P, C)
    return array.reshape(shape) if array.size == int(np.prod(shape)) else array
  return array


def _to_theirs(array, transform, official_shape):
  if transform == "linear":
    return array.T
  if transform == "qkv":
    return array.reshape(official_shape[::-1]).T
  if transform == "qkv_bias":
    return array.reshape(official_shape)
  if transform == "conv":
    return array.transpose(3, 2, 0, 1)
  if transform in ("token", "temporal"):
    return array.reshape(official_shape)
  return array


def _official_shape(transform, shape):
  if transform == "token":
    return (1, 1, shape[0]) if len(shape) == 1 else (1, *shape)
  if transform == "temporal":
    return (1, shape[0], 1, shape[1])
  if transform == "linear":
    return shape[::-1]
  if transform == "qkv":  # (C, 3, H, D) -> (3C, C)
    return (int(np.prod(shape[1:])), shape[0])
  if transform == "qkv_bias":
    return (int(np.prod(shape)),)
  if transform == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  return shape


def unwrap(checkpoint):
  """The state dict inside a saved file: `model_state`, `state_dict`, `state_dict_ema` or `model`, else the
  file itself (raw timm ViT weights get the `base_model.` prefix); a DDP `module.` prefix is removed."""
  for key in ("model_state", "state_dict", "state_dict_ema", "model"):
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
      checkpoint = checkpoint[key]
      break
  sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in checkpoint.items()}
  if sd and not any(k.startswith(("base_model.", "consensus.", "new_fc.")) for k in sd):
    sd = {f"base_model.{k}": v for k, v in sd.items()}
  return sd


def import_params(state_dict, model_cfg, expected):
  """Official state dict -> our nested params; `expected` is our params tree (arrays or shape structs)
  for the config. Raises UserError naming the parameter and both shapes, or listing missing and
  unexpected keys."""
  state_dict = {k: np.asarray(v) for k, v in unwrap(state_dict).items()}
  table = rules(model_cfg)
  ignored = set(_UNUSED_WITH_TA_HEAD) if model_cfg.consensus != "avg" else set()
  missing = [key for _, key, _ in table if key not in state_dict]
  unexpected = sorted(set(state_dict) - {key for _, key, _ in table} - ignored)
  if missing or unexpected:
    raise UserError(f"checkpoint does not fit the config: missing keys {missing or 'none'}; "
                    f"unexpected keys {unexpected or 'none'}")
  wanted, params = layouts.per_block(expected), {}
  for path, key, transform in table:
    name = "/".join(map(str, path))
    want = tuple(wanted[name].shape)
    value = to_ours(state_dict[key], transform, want)
    if value.shape != want:
      raise UserError(f"checkpoint parameter {key} has shape {tuple(state_dict[key].shape)}, the config needs "
                      f"{name} of shape {want} (official shape {_official_shape(transform, want)})")
    params[name] = value.astype(np.float32)
  return layouts.like(expected, params)


def export_state_dict(params, model_cfg):
  """Our nested params -> the official state dict (numpy arrays under the official key names)."""
  sd, flat = {}, layouts.per_block(params)
  for path, key, transform in rules(model_cfg):
    value = np.asarray(flat["/".join(map(str, path))])
    sd[key] = np.ascontiguousarray(_to_theirs(value, transform, _official_shape(transform, value.shape)))
  return sd
