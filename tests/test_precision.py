"""tools.precision: the same experiment in float32 and bfloat16, side by side; the demo learns in both."""

import json

import pytest

from conftest import main_config, read_metrics, run_module
from xvit_jax.errors import UserError
from xvit_jax.tools import precision

STEPS = ["--config.total_steps=4", "--config.log_every=1", "--config.eval_every=2"]


def test_both_precisions_train_from_the_same_start_and_a_second_call_resumes(tmp_path):
  result = precision.compare(main_config(*STEPS), str(tmp_path), last=2)
  runs = result["runs"]
  for dtype in ("float32", "bfloat16"):
    assert [step for step, _ in runs[dtype]["loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in runs[dtype]["top1"]] == [2, 4]
    losses = [r["train/loss"] for r in read_metrics(tmp_path / dtype) if "train/loss" in r]
    assert runs[dtype]["final_loss"] == pytest.approx(sum(losses[-2:]) / 2)
  f32, bf16 = ([loss for _, loss in runs[d]["loss"]] for d in ("float32", "bfloat16"))
  assert f32 != bf16 and f32[0] == pytest.approx(bf16[0], rel=0.02)  # other arithmetic, the same first batch
  assert result["loss_relative_difference"] == pytest.approx(runs["bfloat16"]["final_loss"] / runs["float32"]["final_loss"] - 1)
  table = precision.markdown(result)
  assert "| float32 |" in table and "| bfloat16 |" in table and "within the tolerances" in table
  assert "NOT within" in precision.markdown(dict(result, bfloat16_matches=False))
  precision.plot(result, tmp_path / "p.png")
  assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  with open(tmp_path / "bfloat16" / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "train/lo')  # a line cut short by a kill mid-write: read past, as export reads it
  before = (tmp_path / "bfloat16" / "metrics.jsonl").read_text()
  again = precision.compare(main_config(*STEPS), str(tmp_path), last=2)  # both runs are done: nothing is retrained
  assert again["runs"] == runs and (tmp_path / "bfloat16" / "metrics.jsonl").read_text().startswith(before)


def test_a_run_not_evaluated_at_its_last_step_is_refused_before_training(tmp_path):
  with pytest.raises(UserError, match=r"config.eval_every=3 is not allowed here: a divisor of config.total_steps=4"):
    precision.compare(main_config(*STEPS, "--config.eval_every=3"), str(tmp_path))
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_demo_learns_motion_in_bfloat16_as_in_float32(tmp_path):
  """The README's demo (1500 steps, seed 0) in both precisions through the command line: both reach 90%."""
  result = run_module("xvit_jax.tools.precision", "--config=configs/demo.py", f"--workdir={tmp_path}", timeout=3600)
  assert result.returncode == 0, result.stderr[-2000:]
  runs = json.loads((tmp_path / "precision.json").read_text())["runs"]
  assert runs["float32"]["final_top1"] >= 0.9 and runs["bfloat16"]["final_top1"] >= 0.9, result.stdout[-1000:]
