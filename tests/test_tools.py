"""tools.import_official and tools.export_official as a user runs them."""

import os

import numpy as np
import pytest
from flax import nnx

from conftest import import_official, official_small_config, tool, train_main
from official_numpy import official_forward, random_official_state_dict
from xvit_jax import checkpoints
from xvit_jax.models import create_model


@pytest.fixture
def official_npz(tmp_path):
  sd = random_official_state_dict(num_classes=5, hidden=32, depth=2, heads=4, patch=8, image_size=32, seed=4)
  path = tmp_path / "official.npz"
  np.savez(path, **sd)  # as np.savez(path, **{k: v.numpy() for k, v in state_dict.items()}) writes it
  return sd, path


def test_import_gives_the_official_logits_and_export_round_trips(tmp_path, official_npz):
  sd, path = official_npz
  result = tool("import_official", f"--checkpoint={path}", f"--output={tmp_path / 'ckpt'}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "imported" in result.stdout

  cfg = official_small_config()
  model = create_model(cfg.model)
  state = nnx.state(model, nnx.Param)
  step, params = checkpoints.latest_params(str(tmp_path / "ckpt"), nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  video = np.random.default_rng(0).uniform(-1, 1, (2, 16, 32, 32, 3)).astype(np.float32)
  theirs = official_forward(sd, video.transpose(0, 4, 1, 2, 3), num_segments=8, shift_div=8, heads=4)
  assert step == 0
  assert np.abs(np.asarray(model(video)) - theirs).max() <= 1e-4 * np.abs(theirs).max()

  exported = tmp_path / "exported.npz"
  result = tool("export_official", f"--checkpoint={tmp_path / 'ckpt'}", f"--output={exported}")
  assert result.returncode == 0, result.stderr[-2000:]
  with np.load(exported) as f:
    assert set(f.files) == {k for k in sd if not k.startswith("new_fc")}
    for key in f.files:
      np.testing.assert_array_equal(f[key], sd[key])
  again = tool("import_official", f"--checkpoint={exported}", f"--output={tmp_path / 'again'}")
  assert again.returncode == 0, again.stderr[-2000:]


def test_a_checkpoint_that_does_not_fit_writes_nothing(tmp_path, official_npz):
  sd, _ = official_npz
  bad = tmp_path / "bad.npz"
  np.savez(bad, **dict(sd, **{"base_model.pos_embed": np.zeros((1, 10, 32), np.float32)}))
  result = tool("import_official", f"--checkpoint={bad}", f"--output={tmp_path / 'out'}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: checkpoint parameter base_model.pos_embed has shape (1, 10, 32), the config needs pos_embed of shape "
      "(17, 32) (official shape (1, 17, 32))")
  assert not (tmp_path / "out").exists()
  missing = tool("import_official", f"--checkpoint={tmp_path / 'nope.pth'}", f"--output={tmp_path / 'out'}")
  assert missing.returncode == 2 and "nope.pth does not exist" in missing.stderr
  assert not (tmp_path / "out").exists()


def test_main_evaluates_and_fine_tunes_an_imported_checkpoint(tmp_path, official_npz):
  _, path = official_npz
  import_official(official_small_config(), path, tmp_path)
  common = ["--config.model.num_frames=8", "--config.batch_size=2", "--config.data.eval_size=2",
            "--config.data.object_size=8", "--config.log_every=1"]
  evaluated, _ = train_main(tmp_path, *common, mode="evaluate", config=official_small_config())
  assert "with a fresh optimizer" in evaluated and "evaluation: eval/top1" in evaluated
  tuned, _ = train_main(tmp_path, *common, "--config.total_steps=2", "--config.optimizer.warmup_steps=1",
                        config=official_small_config())
  assert "steps 0..2" in tuned
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "2"]
