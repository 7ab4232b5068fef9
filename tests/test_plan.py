"""tools.plan: the train and eval steps compiled by the XLA TPU compiler (libtpu, requirements-test.txt) for TPU
slices described on this CPU machine, with data, fsdp and tensor axes all above 1; XLA's per-chip memory and
FLOPs as the plan reports them; the mistakes that end it in one line."""

import json
import math
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, TINY, main_config, run_module
from xvit_jax import chips, flops, sharding
from xvit_jax.data import pipeline, sources, synthetic
from xvit_jax.tools import plan

# the demo model of the command-line tests, one block, 8 clips: 2 per (data, fsdp) pair, each on a tensor pair
SLICE = ["--topology=v5e:2x4", "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
         "--config.model.num_layers=1"]
# one block 16384 wide (3.2 G parameters): the parameters and their momentum alone, whole on every chip of a
# data-parallel mesh, are 24 GiB; a v5e chip has 16
HUGE = ["--topology=v5e:2x4", "--config.model.num_layers=1", "--config.model.hidden_size=16384",
        "--config.model.num_heads=16", "--config.model.mlp_dim=65536", "--noeval"]
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce")


def run_plan(*args):
  return run_module("xvit_jax.tools.plan", "--config=configs/demo.py", *TINY, *args)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
  """The tiny model's plan on 8 v5e chips as JSON, with the train step's program text and the config."""
  hlo = tmp_path_factory.mktemp("plan") / "train_step.hlo"
  result = run_plan(*SLICE, "--json", f"--hlo={hlo}", "--strict")
  return result, hlo, main_config("--config.model.num_layers=1")


def test_the_steps_compile_for_a_tpu_slice_with_every_mesh_axis(compiled):
  """Real numbers of XLA's TPU compile: per-chip bytes that add up, the model FLOPs of the global batch, the
  v5e's HBM, a fit; libtpu's start-up warnings (no TPU here) kept off stderr."""
  result, _, config = compiled
  assert result.returncode == 0, result.stderr[-3000:]  # --strict and it fits
  assert result.stderr == ""
  out = json.loads(result.stdout)
  assert (out["chips"], out["device_kind"]) == (8, "TPU v5 lite")
  assert out["mesh"] == {"data": 2, "fsdp": 2, "frames": 1, "tensor": 2}
  assert (out["chips_per_host"], out["per_chip_batch"]) == (8, config.batch_size // 4)
  m = out["per_chip_bytes"]
  assert min(m["arguments"], m["outputs"], m["aliased"], m["temporaries"]) > 0
  assert m["aliased"] <= min(m["arguments"], m["outputs"])  # the donated state
  assert m["total"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["code"]
  assert out["hbm_bytes"] == chips.by_name("v5e").hbm_bytes == 16 * 2 ** 30
  assert out["fits"] is True and out["eval"]["fits"] is True and out["suggestions"] == []
  assert out["eval"]["per_chip_bytes"]["arguments"] > 0
  assert out["eval"]["with_train_state_bytes"] > out["eval"]["per_chip_bytes"]["total"]  # + the momentum
  assert out["flops_per_step"] == flops.train_flops_per_clip(config.model) * config.batch_size
  assert out["flops_per_clip"] > 0 and out["compiled_flops_per_chip"] > 0
  assert out["compiled_flops_per_chip"] * 8 == pytest.approx(out["compiled_to_model_flops"] * out["flops_per_step"])
  assert out["compile_seconds"] > out["train_compile_seconds"] > 0
  peak = chips.by_name("v5e").peak_flops
  assert out["step_seconds"] == pytest.approx(out["flops_per_step"] / (8 * peak * 0.4))
  assert out["input_clips_per_second_per_host"] == pytest.approx(8 * out["clips_per_second_per_chip"])


def test_the_compiled_program_gathers_the_fsdp_shards(compiled):
  """--hlo writes the compiled train step: sharded over fsdp and tensor, it gathers, reduce-scatters or
  all-reduces across chips."""
  _, hlo, _ = compiled
  text = hlo.read_text()
  assert text.startswith("HloModule")
  counts = {op: len(re.findall(rf"\b{op}(-start)?\(", text)) for op in COLLECTIVES}
  assert counts["all-gather"] > 0 and counts["all-gather"] + counts["reduce-scatter"] + counts["all-reduce"] > 2


def test_frames_split_over_chips_exchange_only_the_mixing_halo(tmp_path):
  """mesh.frames=4 (data=2) on 8 v5e chips, the demo's 4 frames one a chip: the compiled train step gathers no
  activations and reshuffles nothing (no all-gather, no all-to-all); X-ViT's mixing takes its neighbour frames
  from the next chip (collective-permutes); the plan counts each chip's clips and frames."""
  hlo = tmp_path / "frames.hlo"
  result = run_plan("--topology=v5e:2x4", "--config.mesh.data=2", "--config.mesh.frames=4", "--noeval", "--json",
                    f"--hlo={hlo}")
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout)
  assert out["mesh"] == {"data": 2, "fsdp": 1, "frames": 4, "tensor": 1}
  assert (out["per_chip_batch"], out["frames_per_chip"]) == (main_config().batch_size // 2, 1)
  counts = {op: len(re.findall(rf"\b{op}(-start)?\(", hlo.read_text()))
            for op in ("all-gather", "all-to-all", "collective-permute")}
  assert counts["collective-permute"] > 0 and counts["all-gather"] == counts["all-to-all"] == 0, counts


def test_a_frames_group_lies_within_one_host():
  """v5e:4x4 is 4 hosts of 2x2 chips: jax.make_mesh would lay a frames axis of 4 along a row of the slice, over
  two hosts; the mesh keeps each frames group on one host, host p holding the p-th rows of the batch."""
  _, _, devices, per_host = plan.slice_devices("v5e:4x4")
  mesh = sharding.make_mesh({"data": 4, "frames": 4}, devices)
  hosts = np.vectorize(lambda d: d.process_index)(mesh.devices)
  assert per_host == 4 and hosts[:, 0, :, 0].tolist() == [[p] * 4 for p in range(4)]
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)


def test_a_plan_that_does_not_fit_names_what_fills_the_chip_and_what_to_try():
  """3.2 G parameters replicated on each v5e chip: the TPU compiler refuses the step for want of HBM; the plan
  says so, with the parameters and optimizer state from their shapes and the largest parameters named, and
  fsdp first among what to try; --strict exits 1."""
  result = run_plan(*HUGE, "--strict")
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  refused = next(line for line in lines if line.startswith("train step: the XLA TPU compiler refused it:"))
  assert "HBM" in refused
  total = next(line for line in lines if line.lstrip().startswith("total"))
  assert "DOES NOT FIT" in total and "of 16.00 GiB HBM" in total
  largest = next(line for line in lines if line.startswith("per chip, largest first:"))
  assert "optimizer state 12.01 GiB" in largest and "parameters 12.01 GiB" in largest  # float32, 3.2 G each
  assert "blocks/0/mlp/fc1/kernel 4.00 GiB" in next(line for line in lines if line.startswith("largest parameters"))
  to_try = next(line for line in lines if line.startswith("to try:"))
  assert to_try.startswith("to try: --config.mesh.fsdp=8 --config.mesh.data=1") and "mesh.frames" not in to_try


def test_a_long_clip_that_does_not_fit_is_told_to_split_its_frames_over_chips():
  """One clip a chip whose activations fill it: the batch cannot shrink, so the plan names the frames axis,
  taken from the data axis as mesh.frames accepts it (whole mixing segments a chip, a frames group in a host);
  not for joint attention, nor where the parameters fill the chip (the test above: the plan's own rule)."""
  def tried(*overrides, activations_first=True, per_host=4):
    config = main_config(*overrides)
    sizes = {"data": 8, "fsdp": 1, "frames": 1, "tensor": 1}
    return plan.suggestions(config, sizes, chips_per_host=per_host, activations_first=activations_first)

  long_clip = ("--config.batch_size=8", "--config.model.num_frames=64", "--config.model.shift_segment=8")
  assert tried(*long_clip)[-1].startswith("--config.mesh.data=4 --config.mesh.frames=2: each clip's 64 frames "
                                          "split over 2 chips, 2x the clips a chip holds with 32 frames of each")
  assert "--config.mesh.frames" not in " ".join(tried(*long_clip, activations_first=False))
  assert "--config.mesh.frames" not in " ".join(tried(*long_clip, "--config.model.attention=joint"))
  assert "--config.mesh.frames" not in " ".join(tried(*long_clip, per_host=1))  # a frames group must lie in a host
  # 3 mixing segments of 4 frames: 2, 4 or 8 chips would cut through them (mesh.frames refuses each)
  odd = ("--config.batch_size=8", "--config.model.num_frames=12", "--config.model.shift_segment=4")
  assert "--config.mesh.frames" not in " ".join(tried(*odd))


def test_without_strict_a_plan_that_does_not_fit_exits_0():
  result = run_plan(*HUGE, "--json")
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout)
  assert out["fits"] is False and out["compiled"] is False and "HBM" in out["compiler_error"]
  # the compiler's own limit, which the plan's table of usable HBM holds
  available = re.search(r"available HBM \(([\d.]+)G\)", out["compiler_error"]).group(1)
  assert float(available) == plan.USABLE_HBM_GIB["v5e"] and out["usable_hbm_bytes"] == int(float(available) * 2 ** 30)
  m = out["per_chip_bytes"]
  assert m["total"] > out["hbm_bytes"] and m["temporaries"] > 0
  assert m["arguments"] > 24 * 2 ** 30  # 3.2 G float32 parameters and as much momentum
  sizes = {d["what"]: d["bytes"] for d in out["dominant"]}
  assert min(sizes["parameters"], sizes["optimizer state"]) > 12 * 2 ** 30


@pytest.mark.parametrize("topology", ["v7x:2x2", "v5p:4x4"])
def test_an_unknown_topology_is_one_line_listing_the_known(topology):
  result = run_plan(f"--topology={topology}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --topology={topology}: not a known TPU slice; known: v4:AxBxC, v5e:AxB, v5p:AxBxC, v6e:AxB in chips "
      "(e.g. v5e:4x4 is 16 v5e chips, v5p:2x2x4 16 v5p chips)"]


def test_a_mesh_the_slice_cannot_hold_is_one_line_naming_it_and_the_chips():
  result = run_plan("--topology=v5e:2x4", "--config.mesh.data=3")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: config.mesh data=3 fsdp=1 frames=1 tensor=1 needs 3 devices, there are 8 (v5e:2x4 is a slice of 8 "
      "chips, one device each)"]


def test_without_libtpu_one_line_says_how_to_install_it():
  """`import libtpu` fails in the process (as where it is not installed): jax cannot describe a slice either."""
  args = ["--config=configs/demo.py", "--topology=v5e:2x4"]
  code = ("import runpy, sys; sys.modules['libtpu'] = None; "
          f"sys.argv = ['plan', *{args!r}]; runpy.run_module('xvit_jax.tools.plan', run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: compiling for a TPU slice needs libtpu, which is not installed: pip install -r requirements-test.txt "
      "(or pip install libtpu==0.0.50.1, the version jax 0.12.0.1 pins)"]


def test_the_planned_batches_are_the_pipelines():
  """The abstract train and eval batches the plan compiles with have the keys, shapes and dtypes of the
  pipeline's real batches (the synthetic task, with mixup's draws)."""
  config = main_config("--config.augment.mixup=0.4", "--config.augment.mixup_group=4")
  mesh = sharding.make_mesh(None, jax.devices()[:1])
  source = lambda split: synthetic.from_config(config, split)
  real_train = next(iter(pipeline.train_dataset(source("train"), global_batch=config.batch_size, seed=0,
                                                clip_fn=sources.TrainClip(config), mixup=0.4, mixup_group=4)))
  real_eval = next(iter(pipeline.eval_dataset(source("eval"), global_batch=config.batch_size,
                                              views_fn=sources.EvalViews(config))))
  for planned, real in ((plan.train_batch(config, mesh), real_train), (plan.eval_batch(config, mesh), real_eval)):
    assert {k: (v.shape, np.dtype(v.dtype)) for k, v in planned.items()} == {
        k: (np.shape(v), np.asarray(v).dtype) for k, v in real.items()}
  assert {"mixup_lam", "mixup_partner", "mixup_label"} <= set(real_train)
  assert math.prod(plan.train_batch(config, mesh)["video"].shape) == real_train["video"].size


def test_a_step_the_compiler_refuses_for_hbm_is_reported_not_raised():
  """libtpu words its out-of-HBM refusal in more than one way (this one came at 496 frames on data=16); each is a
  step that does not fit, with the compiler's figures; any other compile error still raises."""

  class Lowered:
    def __init__(self, message):
      self.message = message

    def compile(self):
      raise jax.errors.JaxRuntimeError(self.message)

  for message in ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out of memory "
                  "in memory space hbm. Used 15.79G of 15.75G hbm. Exceeded hbm capacity by 43.36M.\nTotal hbm usage",
                  "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. CompileTimeHbmOom: Ran out of memory in memory "
                  "space HBM. Used 18.53G of 15.75G hbm."):
    compiled, refused = plan.compile_for_tpu(Lowered(message))
    assert compiled is None and "Used 1" in refused and "\n" not in refused
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    plan.compile_for_tpu(Lowered("INTERNAL: something else"))
