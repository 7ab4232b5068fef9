"""`python -m xvit_jax.benchmark --input_only`: one worker's input throughput on a prepared dataset, as the
command line runs it on a tiny Kinetics dataset of natural clips prepared by xvit_jax.data.prepare; its
JSON merged into an existing --out, and a missing dataset refused in one line. No timing assertions: the
rates are only checked to be positive."""

import json

import numpy as np

from conftest import prepare, run_module
from xvit_jax.data import natural_clips

TINY_SOURCE = dict(frames=24, height=48, width=64, fps=12, codec="libx264", options={})


def test_natural_clip_is_textured_and_moving():
  clip = natural_clips.clip(1, frames=6, height=32, width=40, fps=12)
  assert clip.shape == (6, 32, 40, 3) and clip.dtype == np.uint8
  assert clip.std() > 20  # not a flat texture
  assert np.abs(np.diff(clip.astype(np.int16), axis=0)).mean() > 3  # the camera and the objects move
  assert not np.array_equal(clip, natural_clips.clip(2, frames=6, height=32, width=40, fps=12))


def test_input_only_measures_a_prepared_dataset_and_merges_into_out(tmp_path):
  natural_clips.kinetics_manual(tmp_path / "manual", 3, spec=TINY_SOURCE)
  prepare(tmp_path, "kinetics400")
  out = tmp_path / "r.json"
  out.write_text(json.dumps({"meta": {"kept": True}}))
  run = run_module("xvit_jax.benchmark", "--input_only", "--config=configs/k400.py:smoke", "--input_records=2",
                   f"--config.data.data_dir={tmp_path / 'data'}", "--input_passes=2", f"--out={out}")
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results["meta"] == {"kept": True}
  r = results["input"]
  assert r["train_clips_per_s_per_worker"] > 0 and r["eval_videos_per_s_per_worker"] > 0
  assert r["train_clips_per_cpu_s"] > 0 and r["eval_videos_per_cpu_s"] > 0
  assert len(r["train_pass_rates"]) == len(r["eval_pass_rates"]) == r["passes"] == 2 and r["records_per_pass"] == 2
  assert r["train_records"] == r["eval_records"] == 3 and r["unreadable"] == 0 and not r["self_prepared"]
  assert r["recipe"]["dataset"] == "kinetics400" and "multi-scale crop" in r["recipe"]["train"]
  assert run.stdout.startswith("input, one worker (cpu ") and "clips/s" in run.stdout


def test_input_only_refuses_a_missing_dataset_in_one_line(tmp_path):
  run = run_module("xvit_jax.benchmark", "--input_only", "--config=configs/k400.py:smoke",
                   f"--config.data.data_dir={tmp_path / 'none'}")
  assert run.returncode == 2
  assert run.stderr.count("\n") == 1, run.stderr
  assert run.stderr.startswith("error: ") and "not prepared" in run.stderr and "xvit_jax.data.prepare" in run.stderr
