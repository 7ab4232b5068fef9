"""config.init_from: ImageNet-21k ViT weights (Google .npz or timm state dict) into X-ViT."""

import numpy as np
from flax import nnx

from conftest import tiny_config, train_main
from xvit_jax import layouts
from xvit_jax.convert import official, pretrained
from xvit_jax.models import create_model

C, HEADS, MLP = 32, 4, 64


def google_vit_npz(path, grid, rng):
  """A Google ViT checkpoint laid out as imagenet21k/ViT-B_16.npz, tiny and random."""
  w = {"embedding/kernel": rng.normal(size=(8, 8, 3, C)), "embedding/bias": rng.normal(size=C),
       "cls": rng.normal(size=(1, 1, C)), "Transformer/posembed_input/pos_embedding": rng.normal(size=(1, 1 + grid * grid, C)),
       "Transformer/encoder_norm/scale": rng.normal(size=C), "Transformer/encoder_norm/bias": rng.normal(size=C),
       "pre_logits/kernel": rng.normal(size=(C, C)), "pre_logits/bias": rng.normal(size=C),
       "head/kernel": rng.normal(size=(C, 11)), "head/bias": rng.normal(size=11)}
  for i in range(2):
    b = f"Transformer/encoderblock_{i}/"
    for n in ("LayerNorm_0", "LayerNorm_2"):
      w[b + n + "/scale"], w[b + n + "/bias"] = rng.normal(size=C), rng.normal(size=C)
    for n in ("query", "key", "value"):
      w[b + f"MultiHeadDotProductAttention_1/{n}/kernel"] = rng.normal(size=(C, HEADS, C // HEADS))
      w[b + f"MultiHeadDotProductAttention_1/{n}/bias"] = rng.normal(size=(HEADS, C // HEADS))
    w[b + "MultiHeadDotProductAttention_1/out/kernel"] = rng.normal(size=(HEADS, C // HEADS, C))
    w[b + "MultiHeadDotProductAttention_1/out/bias"] = rng.normal(size=C)
    w[b + "MlpBlock_3/Dense_0/kernel"], w[b + "MlpBlock_3/Dense_0/bias"] = rng.normal(size=(C, MLP)), rng.normal(size=MLP)
    w[b + "MlpBlock_3/Dense_1/kernel"], w[b + "MlpBlock_3/Dense_1/bias"] = rng.normal(size=(MLP, C)), rng.normal(size=C)
  w = {k: v.astype(np.float32) for k, v in w.items()}
  np.savez(path, **w)
  return w


def fresh(cfg):
  return nnx.to_pure_dict(nnx.state(create_model(cfg.model, seed=7), nnx.Param))


def test_google_imagenet21k_npz(tmp_path):
  cfg = tiny_config(hidden_size=C, num_heads=HEADS, mlp_dim=MLP, image_size=32, consensus="temporal_attention")
  w = google_vit_npz(tmp_path / "ViT.npz", grid=2, rng=np.random.default_rng(0))  # pretrained at a 2x2 grid
  start = fresh(cfg)
  params, report = pretrained.load(str(tmp_path / "ViT.npz"), cfg.model, start)

  attn = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/"
  qkv = params["blocks"][1]["attn"]["qkv"]["kernel"]
  assert qkv.shape == (C, 3, HEADS, C // HEADS)  # whole heads of q, k and v: Google's (C, H, D) kernels side by side
  np.testing.assert_array_equal(qkv[:, 1], w[attn + "key/kernel"])
  np.testing.assert_array_equal(params["blocks"][1]["attn"]["qkv"]["bias"][2], w[attn + "value/bias"])
  np.testing.assert_array_equal(params["blocks"][1]["attn"]["proj"]["kernel"], w[attn + "out/kernel"].reshape(C, C))
  np.testing.assert_array_equal(params["blocks"][0]["mlp"]["fc2"]["kernel"],
                                w["Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel"])
  np.testing.assert_array_equal(params["patch_embed"]["kernel"], w["embedding/kernel"])
  pos = params["pos_embed"]
  assert pos.shape == (17, C)  # resized from 2x2 to the model's 4x4 grid, CLS entry kept
  np.testing.assert_array_equal(pos[0], w["Transformer/posembed_input/pos_embedding"][0, 0])
  grid = pos[1:].reshape(4, 4, C)
  corners = w["Transformer/posembed_input/pos_embedding"][0, 1:].reshape(2, 2, C)
  np.testing.assert_allclose(grid.mean(axis=(0, 1)), corners.mean(axis=(0, 1)), atol=1e-5)
  np.testing.assert_array_equal(params["temp_embed"], np.zeros_like(start["temp_embed"]))
  np.testing.assert_array_equal(params["head"]["fc2"]["kernel"], start["head"]["fc2"]["kernel"])
  assert "temp_embed" in report["fresh"] and "head/fc2/kernel" in report["fresh"]
  assert not any(name.startswith("blocks") for name in report["fresh"])
  assert {"base_model.pre_logits.fc.weight", "base_model.head.weight"} <= set(report["dropped"])


def test_a_model_that_stores_its_blocks_stacked_loads_the_same_weights(tmp_path):
  """model.scan_layers (blocks stored stacked, layouts.py): the same parameters as block by block, and a report
  that names them block by block."""
  google_vit_npz(tmp_path / "ViT.npz", grid=4, rng=np.random.default_rng(2))
  loaded = {}
  for scan in (False, True):
    cfg = tiny_config(hidden_size=C, num_heads=HEADS, mlp_dim=MLP, image_size=32, scan_layers=scan)
    params, report = pretrained.load(str(tmp_path / "ViT.npz"), cfg.model, fresh(cfg))
    assert ("stacks" in params, "blocks" in params) == (scan, not scan)
    loaded[scan] = (layouts.per_block(params), report)
  assert loaded[True][1] == loaded[False][1]
  assert "blocks/1/attn/qkv/kernel" in loaded[True][1]["loaded"]
  assert sorted(loaded[True][0]) == sorted(loaded[False][0])
  for name, value in loaded[False][0].items():
    np.testing.assert_array_equal(loaded[True][0][name], value, err_msg=name)


def test_timm_state_dict_gives_the_same_model_as_the_google_npz(tmp_path):
  cfg = tiny_config(hidden_size=C, num_heads=HEADS, mlp_dim=MLP, image_size=32)
  w = google_vit_npz(tmp_path / "ViT.npz", grid=4, rng=np.random.default_rng(1))
  from_google, _ = pretrained.load(str(tmp_path / "ViT.npz"), cfg.model, fresh(cfg))
  timm = {k[len("base_model."):]: v for k, v in pretrained.google_vit_to_official_keys(w).items()}
  timm["head.weight"], timm["pre_logits.fc.weight"] = np.zeros((11, C), np.float32), np.zeros((C, C), np.float32)
  np.savez(tmp_path / "timm.npz", **timm)
  from_timm, report = pretrained.load(str(tmp_path / "timm.npz"), cfg.model, fresh(cfg))
  for a, b in zip(official.export_state_dict(from_google, cfg.model).values(),
                  official.export_state_dict(from_timm, cfg.model).values()):
    np.testing.assert_array_equal(a, b)
  assert "base_model.head.weight" in report["dropped"] and "base_model.pre_logits.fc.weight" in report["dropped"]


def test_main_fine_tunes_from_an_imagenet21k_npz_with_no_other_step(tmp_path):
  google_vit_npz(tmp_path / "ViT.npz", grid=2, rng=np.random.default_rng(2))
  stdout, _ = train_main(tmp_path / "run", "--config.total_steps=2", f"--config.init_from={tmp_path / 'ViT.npz'}")
  line = next(l for l in stdout.splitlines() if l.startswith("initialised from"))
  assert "parameters loaded" in line and "fresh: head/fc/bias, head/fc/kernel, temp_embed" in line
  assert "base_model.pre_logits.fc.weight" in line
