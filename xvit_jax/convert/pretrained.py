"""`config.init_from`: start a model from pretrained weights (reference section 4.4).

Accepted sources:
  - an xvit_jax checkpoint directory (its newest step), for fine-tuning an imported or trained model;
  - the original Google ViT `.npz` (e.g. imagenet21k/ViT-B_16.npz: `embedding/kernel`, `Transformer/...`);
  - a PyTorch-style state dict (`.npz`, or `.pth` with torch installed): timm ViT keys (`blocks.0.attn.qkv.weight`,
    ...) or the official X-ViT keys (`base_model.`, `consensus.`).
The position embedding is resized to the model's patch grid, the temporal embedding stays at zero unless
the source has one, pre-logits and classifier heads of other tasks are dropped; every parameter that is
not loaded keeps its fresh initialisation, and the report says which.
"""

import os
import pickle
import re

import jax
import numpy as np

from xvit_jax import checkpoints, layouts
from xvit_jax.convert import official
from xvit_jax.errors import UserError


def read_weights(path):
  """{key: numpy array} from an .npz, or from a .pth/.pt file (needs torch: requirements-torch.txt)."""
  if not os.path.isfile(path):
    raise UserError(f"weights file {path} does not exist")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
      raise UserError(f"cannot read {path} as .npz: {e}") from None
  if path.endswith((".pth", ".pt", ".bin")):
    state = official.unwrap(read_torch(path))
    return {k: v.detach().float().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in state.items()
            if hasattr(v, "shape")}
  raise UserError(f"unknown weights format {path}: expected .npz, .pth or a checkpoint directory")


def _numpy_data_types():
  """numpy's scalar, dtype and array reconstructors: they build data from bytes and call nothing else, and
  some PyTorch checkpoints hold numpy numbers (an epoch, a best accuracy) beside the tensors."""
  from numpy._core import multiarray  # pylint: disable=import-outside-toplevel
  dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
  return [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]  # pylint: disable=protected-access


def read_torch(path):
  """The object in a PyTorch file (.pth/.pt/.bin), read as data only: tensors, numbers, strings, lists, dicts
  (and numpy numbers and arrays), never an object whose loading runs code. torch's `weights_only` unpickler
  refuses any other global a file names (os.system, a model class, ...) before calling anything: such a
  file is refused in one line (UserError) naming it and the global. Needs torch (requirements-torch.txt)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"reading {path} needs torch: pip install -r requirements-torch.txt "
                    "(or save the state dict as .npz)") from None
  try:
    with torch.serialization.safe_globals(_numpy_data_types()):
      return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    needs = re.search(r"GLOBAL (\S+)", str(e)) or re.search(r"[Uu]nsupported (\w[^\n.]*)", str(e))
    what = f"it needs {needs.group(1)}" if needs else " ".join(str(e).split())[:200]
    raise UserError(f"refusing {path}: loading it would run code ({what}); weights files are read as data only "
                    "(tensors, numbers, strings, lists, dicts)") from None
  except Exception as e:  # noqa: BLE001 - a damaged or foreign file is the user's to fix
    raise UserError(f"cannot read {path} with torch.load: {' '.join(str(e).split())[:300]}") from None


def google_vit_to_official_keys(weights):
  """Google ViT .npz (Flax names) -> the official/timm PyTorch key names and layouts."""
  out = {"base_model.patch_embed.proj.weight": weights["embedding/kernel"].transpose(3, 2, 0, 1),
         "base_model.patch_embed.proj.bias": weights["embedding/bias"],
         "base_model.cls_token": weights["cls"],
         "base_model.pos_embed": weights["Transformer/posembed_input/pos_embedding"],
         "base_model.norm.weight": weights["Transformer/encoder_norm/scale"],
         "base_model.norm.bias": weights["Transformer/encoder_norm/bias"]}
  i = 0
  while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in weights:
    src, dst = f"Transformer/encoderblock_{i}/", f"base_model.blocks.{i}."
    attn = src + "MultiHeadDotProductAttention_1/"
    qkv = [weights[attn + f"{name}/kernel"] for name in ("query", "key", "value")]  # (C, H, D) each
    out[dst + "attn.qkv.weight"] = np.concatenate([k.reshape(k.shape[0], -1) for k in qkv], axis=1).T
    out[dst + "attn.qkv.bias"] = np.concatenate([weights[attn + f"{n}/bias"].reshape(-1) for n in ("query", "key", "value")])
    out[dst + "attn.proj.weight"] = weights[attn + "out/kernel"].reshape(-1, weights[attn + "out/kernel"].shape[-1]).T
    out[dst + "attn.proj.bias"] = weights[attn + "out/bias"]
    for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
      out[dst + ours + ".weight"] = weights[src + theirs + "/scale"]
      out[dst + ours + ".bias"] = weights[src + theirs + "/bias"]
    for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
      out[dst + f"mlp.{ours}.weight"] = weights[src + f"MlpBlock_3/{theirs}/kernel"].T
      out[dst + f"mlp.{ours}.bias"] = weights[src + f"MlpBlock_3/{theirs}/bias"]
    i += 1
  for google, timm in (("pre_logits", "base_model.pre_logits.fc"), ("head", "base_model.head")):
    if f"{google}/kernel" in weights:  # named so the report lists them as ignored
      out[f"{timm}.weight"], out[f"{timm}.bias"] = weights[f"{google}/kernel"].T, weights[f"{google}/bias"]
  return out


def resize_pos_embed(pos, num_tokens):
  """(1 + g*g, C) -> (num_tokens, C): the patch grid resized bilinearly, the CLS entry kept."""
  if pos.shape[0] == num_tokens:
    return pos
  old, new = int(round((pos.shape[0] - 1) ** 0.5)), int(round((num_tokens - 1) ** 0.5))
  if old * old != pos.shape[0] - 1 or new * new != num_tokens - 1:
    raise UserError(f"cannot resize a position embedding of {pos.shape[0]} tokens to {num_tokens}: not square grids")
  grid = jax.image.resize(pos[1:].reshape(old, old, -1), (new, new, pos.shape[1]), "bilinear", antialias=False)
  return np.concatenate([pos[:1], np.asarray(grid).reshape(new * new, -1)])


def load(path, model_cfg, params):
  """`params` (pure nested dict, fresh initialisation) with everything `path` provides loaded into it.

  Returns (params, report) where report = {"loaded": [...], "fresh": [...], "dropped": [...]} names parameters."""
  if os.path.isdir(path):
    _, stored = checkpoints.latest_params(path, params)
    return stored, {"loaded": sorted(layouts.per_block(params)), "fresh": [], "dropped": []}
  weights = read_weights(path)
  if "embedding/kernel" in weights:
    weights = google_vit_to_official_keys(weights)
  weights = official.unwrap(weights)
  flat = layouts.per_block(params)  # reports name block by block in either layout
  loaded, dropped = {}, []
  table = {key: (path_, transform) for path_, key, transform in official.rules(model_cfg)}
  for key, value in weights.items():
    if key not in table:
      dropped.append(key)  # pre_logits, the 21k head, new_fc of another consensus, ...
      continue
    path_, transform = table[key]
    name = "/".join(map(str, path_))
    want = flat[name].shape
    if name == "pos_embed":
      value = resize_pos_embed(value.reshape(-1, value.shape[-1]), want[0])
    value = official.to_ours(np.asarray(value), transform, want)
    if value.shape != tuple(want):
      if name.startswith("head/"):  # a classifier for another label set: start fresh
        dropped.append(key)
        continue
      raise UserError(f"{path}: {key} has shape {tuple(weights[key].shape)}, the config needs {name} of shape {tuple(want)}")
    loaded[name] = value.astype(np.float32)
  result = layouts.like(params, {**flat, **loaded})
  return result, {"loaded": sorted(loaded), "fresh": sorted(set(flat) - set(loaded)), "dropped": sorted(dropped)}
