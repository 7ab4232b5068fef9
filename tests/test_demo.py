"""The README's promise: X-ViT learns the motion task; the spatial-only ViT cannot."""

import json
import subprocess
import sys
import time

import pytest

from conftest import REPO


def top1s(workdir):
  """eval/top1 of each evaluation in metrics.jsonl so far (a line still being written is left out)."""
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
  except FileNotFoundError:
    return []
  records = []
  for line in lines:
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return [r["eval/top1"] for r in records if "eval/top1" in r]


def demo(workdir, *overrides, stop_at=None, timeout=900):
  """The README's demo command, run to its end, or stopped as soon as an evaluation reaches `stop_at`:
  the top-1 of its evaluations."""
  process = subprocess.Popen([sys.executable, "-m", "xvit_jax.main", "--config=configs/demo.py",
                              f"--workdir={workdir}", *overrides], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + timeout
  while process.poll() is None and time.time() < deadline:
    if stop_at is not None and any(top1 >= stop_at for top1 in top1s(workdir)):
      process.kill()
    time.sleep(1)
  process.kill()
  stderr = process.communicate()[1]
  assert process.returncode == 0 or (stop_at is not None and process.returncode == -9), stderr[-2000:]
  return top1s(workdir)


@pytest.mark.slow  # about 2 minutes on a 2-core machine: the slow tests' README command runs it
def test_the_demo_as_the_readme_gives_it_learns_motion(tmp_path):
  # evaluations come every 250 steps; the run is stopped at the first one at 90% (step 500 with seed 0)
  assert max(demo(tmp_path, stop_at=0.9)) >= 0.9


@pytest.mark.slow
def test_the_spatial_only_demo_stays_at_chance(tmp_path):
  evaluations = demo(tmp_path, "--config.model.attention=spatial")  # to the end
  assert evaluations[-1] <= 0.4  # 4 classes: chance is 0.25
