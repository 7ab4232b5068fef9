"""The official X-ViT forward pass in PyTorch, op for op as the official code runs it (timm Attention
with explicit matmuls, the TSM-style shift of k and v through view/permute and a zeroed copy, the
period-8 temporal embedding over the folded batch, the VitHead), on an official state dict.

For same-machine comparisons with the official implementation (`python -m xvit_jax.benchmark` uses it
when torch is installed: requirements-torch.txt). Eval mode only.
"""

import torch
import torch.nn.functional as F

BACKBONE_EPS, HEAD_EPS = 1e-6, 1e-5


def _shift(x, segments, fold_div):
  """official TemporalShift of k or v: x (B*T, H, N, Dh)."""
  nt, h, n, dh = x.shape
  x = x.view(nt // segments, segments, h, n, dh).permute(0, 1, 2, 4, 3).reshape(nt // segments, segments, h * dh, n)
  fold = h * dh // fold_div
  out = torch.zeros_like(x)
  out[:, :-1, :fold] = x[:, 1:, :fold]
  out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]
  out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
  return out.view(nt // segments, segments, h, dh, n).permute(0, 1, 2, 4, 3).reshape(nt, h, n, dh)


def _attention(x, sd, name, heads, shift):
  bt, n, d = x.shape
  qkv = F.linear(x, sd[name + ".qkv.weight"], sd.get(name + ".qkv.bias"))
  q, k, v = qkv.reshape(bt, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
  if shift is not None:
    k, v = _shift(k, *shift), _shift(v, *shift)
  attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(dim=-1)
  return F.linear((attn @ v).transpose(1, 2).reshape(bt, n, d), sd[name + ".proj.weight"], sd[name + ".proj.bias"])


def _block(x, sd, name, heads, eps, shift=None):
  norm = lambda y, part: F.layer_norm(y, (y.shape[-1],), sd[f"{name}.{part}.weight"], sd[f"{name}.{part}.bias"], eps)
  x = x + _attention(norm(x, "norm1"), sd, name + ".attn", heads, shift)
  hidden = F.gelu(F.linear(norm(x, "norm2"), sd[name + ".mlp.fc1.weight"], sd[name + ".mlp.fc1.bias"]))
  return x + F.linear(hidden, sd[name + ".mlp.fc2.weight"], sd[name + ".mlp.fc2.bias"])


class OfficialXViT(torch.nn.Module):
  """official XVIT(consensus="vit") in eval mode on `state_dict` (numpy or torch values, official keys)."""

  def __init__(self, state_dict, *, num_segments, shift_div, heads):
    super().__init__()
    self.sd = {k: torch.tensor(v) for k, v in state_dict.items()}
    self.shift, self.heads = (num_segments, shift_div), heads
    self.depth = sum(1 for k in self.sd if k.startswith("base_model.blocks.") and k.endswith(".norm1.weight"))

  @torch.no_grad()
  def forward(self, video):
    """video (B, 3, T, H, W) -> logits (B, classes)."""
    sd = self.sd
    b, c, t, h, w = video.shape
    x = video.transpose(1, 2).reshape(b * t, c, h, w)
    x = F.conv2d(x, sd["base_model.patch_embed.proj.weight"], sd["base_model.patch_embed.proj.bias"],
                 stride=sd["base_model.patch_embed.proj.weight"].shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["base_model.cls_token"].expand(b * t, -1, -1), x], dim=1) + sd["base_model.pos_embed"]
    period = sd["base_model.temp_embed"].shape[1]
    n, d = x.shape[1:]
    x = (x.view(b * t // period, period, n, d) + sd["base_model.temp_embed"]).view(b * t, n, d)
    for i in range(self.depth):
      x = _block(x, sd, f"base_model.blocks.{i}", self.heads, BACKBONE_EPS, self.shift)
    x = F.layer_norm(x, (d,), sd["base_model.norm.weight"], sd["base_model.norm.bias"], BACKBONE_EPS)[:, 0]
    x = torch.cat([sd["consensus.cls_token"].expand(b, -1, -1), x.view(b, t, d)], dim=1)
    x = _block(x, sd, "consensus.temporal_encoder.0", self.heads, HEAD_EPS)[:, 0]
    x = F.layer_norm(x, (d,), sd["consensus.mlp_head.0.weight"], sd["consensus.mlp_head.0.bias"], HEAD_EPS)
    x = F.gelu(F.linear(x, sd["consensus.mlp_head.1.weight"], sd["consensus.mlp_head.1.bias"]))
    return F.linear(x, sd["consensus.mlp_head.4.weight"], sd["consensus.mlp_head.4.bias"])
