"""`python -m xvit_jax.benchmark --preset=quick` end to end: every section present and positive, the cost
claims (mixing is free, joint attention superlinear), a valid PNG. No timing assertions: speed numbers
are only checked to be positive."""

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("benchmark")
  out, plot = tmp / "bench.json", tmp / "bench.png"
  proc = subprocess.run([sys.executable, "-m", "xvit_jax.benchmark", "--preset=quick", f"--out={out}", f"--plot={plot}"],
                        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), plot, proc.stdout


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
  assert {s["source"] for s in inp["sources"]} == {"synthetic", "mp4_kinetics"}
  assert all(s["clips_per_s"] > 0 and s["workers_needed"] >= 1 for s in inp["sources"])
  for title in ("## Model cost", "## Speed", "## The shift", "## Input"):
    assert title in stdout


def test_mixing_is_free_and_joint_attention_superlinear(run):
  gflops = {(c["variant"], c["frames"]): c["gflops"] for c in run[0]["cost"]}
  for frames in (4, 8, 16):
    assert abs(gflops["xvit", frames] / gflops["spatial", frames] - 1) < 0.01
  assert abs(gflops["spatial", 16] / gflops["spatial", 4] - 4) < 0.01
  assert gflops["joint", 8] / gflops["joint", 4] > 2.05
  assert gflops["joint", 16] / gflops["joint", 8] > 2.05


def test_plot_is_a_png(run):
  data = run[1].read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
  assert width > 200 and height > 200


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
