"""`python -m xvit_jax.benchmark --preset=quick` end to end: every section present and positive, a valid
PNG; and the paper's cost claims from XLA's cost analysis, on ViT-B/16 and in the benchmark's table:
mixing is free and linear in frames, joint attention is not. No timing assertions: speed numbers are
only checked to be positive."""

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO, cpu_env
from xvit_jax import config_lib
from xvit_jax.flops import forward_flops


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("benchmark")
  out, plot = tmp / "bench.json", tmp / "bench.png"
  proc = subprocess.run([sys.executable, "-m", "xvit_jax.benchmark", "--preset=quick", f"--out={out}", f"--plot={plot}"],
                        cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), plot, proc.stdout


@pytest.mark.slow  # the quick benchmark end to end takes 75 s
def test_every_section_has_positive_numbers(run):
  results, _, stdout = run
  variants = {"spatial", "xvit", "divided", "joint"}
  assert set(results["meta"]["variants"]) == variants
  assert {c["variant"] for c in results["cost"]} == variants and all(c["gflops"] > 0 for c in results["cost"])
  assert results["peak"]["tflops_per_s"] > 0
  assert {(s["variant"], s["frames"]) for s in results["speed"]} == {(v, t) for v in variants for t in (4, 8)}
  for s in results["speed"]:
    for key in ("train_step_s", "train_clips_per_s", "train_step_gflops", "train_mfu", "infer_s", "infer_clips_per_s",
                "infer_gflops", "infer_mfu", "train_ratio_vs_spatial"):
      assert s[key] > 0, (s["variant"], s["frames"], key)
    assert s["peak_bytes_so_far"] is None or s["peak_bytes_so_far"] > 0
  assert [s["frames"] for s in results["shift"]] == [4, 8]
  for s in results["shift"]:
    assert s["xvit_forward_s"] > 0 and s["no_shift_forward_s"] > 0 and math.isfinite(s["share"])
  inp = results["input"]
  assert inp["model_train_clips_per_s"] > 0
  assert {s["source"] for s in inp["sources"]} == {"synthetic", "jpeg_kinetics", "mp4_kinetics"}
  assert all(s["clips_per_s"] > 0 and s["workers_needed"] >= 1 for s in inp["sources"])
  for title in ("## Model cost", "## Speed", "## The shift", "## Input"):
    assert title in stdout


def vit_b16(frames, attention):
  m = config_lib.base_config().model
  m.num_frames, m.attention, m.consensus = frames, attention, "avg"
  return m


@pytest.fixture(scope="module")
def gflops():
  """ViT-B/16's forward GFLOPs per clip, {(attention, frames): GFLOPs}."""
  return {(a, t): forward_flops(vit_b16(t, a)) / 1e9 for a in ("spatial", "xvit", "joint") for t in (8, 16)}


def test_space_time_mixing_costs_within_one_percent_of_spatial_attention(gflops):
  for frames in (8, 16):
    assert abs(gflops["xvit", frames] / gflops["spatial", frames] - 1) < 0.01, (frames, gflops)


@pytest.mark.slow  # the quick benchmark end to end takes 75 s
def test_the_benchmark_table_says_so_too(run):
  table = {(c["variant"], c["frames"]): c["gflops"] for c in run[0]["cost"]}
  for frames in (4, 8, 16):
    assert abs(table["xvit", frames] / table["spatial", frames] - 1) < 0.01, (frames, table)
  assert abs(table["spatial", 16] / table["spatial", 4] - 4) < 0.01
  assert table["joint", 8] / table["joint", 4] > 2.05
  assert table["joint", 16] / table["joint", 8] > 2.05


def test_vit_b16_per_frame_cost_matches_the_paper(gflops):
  # reference section 7: ~17.56 GMACs per frame, i.e. ~35.1 GFLOPs; paper: 425 GMACs for 8 frames x 3 views
  assert 34.0 < gflops["xvit", 8] / 8 < 36.5
  assert 400 < gflops["xvit", 8] * 3 / 2 < 440


def test_xvit_is_linear_and_joint_attention_superlinear_in_frames(gflops):
  assert abs(gflops["xvit", 16] / gflops["xvit", 8] - 2) < 0.01
  assert gflops["joint", 16] / gflops["joint", 8] > 2.15


@pytest.mark.slow  # the quick benchmark end to end takes 75 s
def test_plot_is_a_png(run):
  data = run[1].read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
  assert width > 200 and height > 200


@pytest.mark.slow  # the quick benchmark end to end takes 75 s
def test_out_of_memory_becomes_a_row_not_a_crash(run, tmp_path):
  import jax
  from xvit_jax import benchmark

  def oom_for_joint(configs, steps):  # together they do not fit; alone only joint does not
    if any(c.model.attention == "joint" for c in configs):
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1 bytes.")
    return [{"variant": c.model.attention, "frames": c.model.num_frames} for c in configs]

  def other(configs, steps):
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")

  configs = [benchmark.make_config("quick", v, 8) for v in ("xvit", "joint")]
  record = {"variant": "joint", "frames": 8, "error": "out of memory"}
  assert benchmark.guarded(oom_for_joint, configs, 1) == [{"variant": "xvit", "frames": 8}, record]
  with pytest.raises(jax.errors.JaxRuntimeError):
    benchmark.guarded(other, configs, 1)
  results = dict(run[0], speed=[s if (s["variant"], s["frames"]) != ("joint", 8) else record for s in run[0]["speed"]])
  assert "| joint | 8 | out of memory |" in benchmark.markdown(results)
  benchmark.plot(results, tmp_path / "oom.png")
  assert (tmp_path / "oom.png").read_bytes()[:4] == b"\x89PNG"


def test_cudnn_attention_is_refused_in_one_line_before_measuring_on_a_cpu():
  proc = subprocess.run([sys.executable, "-m", "xvit_jax.benchmark", "--preset=quick", "--speed_only",
                         "--dtype=bfloat16", "--attention_impl=cudnn"], cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False, env=cpu_env())
  assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: config.model.attention_impl='cudnn' is not allowed: xla on this cpu backend (cudnn needs an "
      "NVIDIA GPU)"), proc.stderr[-2000:]


@pytest.mark.slow  # two tiny train steps compiled and timed: about 20 s
def test_speed_only_measures_the_speed_with_the_attention_implementation_recorded(tmp_path):
  from xvit_jax import benchmark  # pylint: disable=import-outside-toplevel
  results = benchmark.run("quick", variants=("xvit",), steps=1, speed_only=True)
  assert results["meta"]["attention_impl"] == "xla" and results["input"] is None and results["shift"] == []
  assert [s["frames"] for s in results["speed"]] == [4, 8]
  assert all(s["train_step_s"] > 0 and 0 < s["train_mfu"] for s in results["speed"])
  text = benchmark.markdown(results)
  assert "attention_impl xla" in text and "## Input" not in text
  benchmark.plot(results, tmp_path / "speed.png")
  assert (tmp_path / "speed.png").read_bytes()[:4] == b"\x89PNG"
