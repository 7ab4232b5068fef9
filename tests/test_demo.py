"""The README's promise: X-ViT learns the motion task; the spatial-only ViT cannot."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


def final_top1(workdir, *overrides):
  result = subprocess.run([sys.executable, "-m", "xvit_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
                           *overrides], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  with open(workdir / "metrics.jsonl") as f:
    evals = [r for r in map(json.loads, f) if "eval/top1" in r]
  return evals[-1]["eval/top1"]


def test_the_demo_as_the_readme_gives_it_learns_motion(tmp_path):
  assert final_top1(tmp_path) >= 0.9


@pytest.mark.slow
def test_the_spatial_only_demo_stays_at_chance(tmp_path):
  assert final_top1(tmp_path, "--config.model.attention=spatial") <= 0.4  # 4 classes: chance is 0.25
