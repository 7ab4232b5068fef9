"""Cost, speed, MFU and input throughput of the attention variants in one run: JSON (--out), markdown
(stdout), plot (--plot). `python -m xvit_jax.benchmark --preset=full --dtype=bfloat16 --out=b.json`.
Sections: cost (XLA-counted forward GFLOPs per clip), peak (a jitted square matmul), speed (train step and
forward on random clips, ratio to spatial, MFU, memory), shift (the mixing's own time), input (one worker).
`--input_only [--config=configs/k400.py --config.data.data_dir=DIR]`: only one worker's input throughput on a
prepared dataset (xvit_jax/input_benchmark.py), merged into --out's JSON as "input"."""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from xvit_jax import config_lib, input_benchmark, optim, preprocess, sharding, train
from xvit_jax import state as state_lib
from xvit_jax.flops import forward_flops
from xvit_jax.models import create_model
from xvit_jax.tools import cli

VARIANTS = ("spatial", "xvit", "divided", "joint")
PAPER_GFLOPS = {8: 2 * 425 / 3, 16: 2 * 850 / 3}  # the paper's GMACs over 1x3 views -> FLOPs per clip
TINY = dict(hidden_size=64, num_layers=4, num_heads=4, mlp_dim=256, image_size=32, patch_size=8, num_classes=10)
PRESETS = {
    "quick": dict(model=TINY, cost_frames=(4, 8, 16), speed_frames=(4, 8), steps=10, input_frames=8, input_clips=3),
    "full": dict(model={}, cost_frames=(8, 16, 32), speed_frames=(8, 16), steps=5, input_frames=16, input_clips=8),
}


def make_config(preset, attention, frames, *, dtype="float32", batch=1, attention_impl="xla"):
  """base_config() (ViT-B/16 at 224) or the tiny model, with the average consensus so only attention differs."""
  c = config_lib.base_config()
  c.dtype, c.batch_size = dtype, batch
  c.model.update({**PRESETS[preset]["model"], "attention": attention, "num_frames": frames, "consensus": "avg",
                  "attention_impl": attention_impl})
  config_lib.check(c, jax.device_count())
  return c


def memory(compiled=None):
  """Bytes of one call of `compiled` as XLA plans it (arguments + outputs + temporaries - donated), or
  without it the backend's high-water mark so far in this process; None where not reported (CPU)."""
  if compiled is not None:
    m = compiled.memory_analysis()
    return m and m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  return None if None in peaks else max(peaks)


def median_times(fns, steps, warmup=1):
  """Median wall time of each fn() over `steps` calls after `warmup`, each waited for on the device; the
  fns take turns, so drift in the machine's load hits them alike."""
  times = [[] for _ in fns]
  for i in range(warmup + steps):
    for fn, out in zip(fns, times):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      if i >= warmup:
        out.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def model_cost(preset, variants, frames):
  """[{variant, frames, gflops}]: one clip's forward pass (float32), as XLA counts it (2 per multiply-add)."""
  return [{"variant": v, "frames": t, "gflops": forward_flops(make_config(preset, v, t).model) / 1e9}
          for v in variants for t in frames]


def matmul_peak(dtype, size=None, steps=5):
  """Achievable FLOP/s of this backend and dtype: a jitted size x size matmul (8192; 2048 on CPU)."""
  size = size or (2048 if jax.default_backend() == "cpu" else 8192)  # 8192: launch overhead < 3%
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul).lower(a, a).compile()
  seconds, = median_times([lambda: matmul(a, a)], steps)
  return {"dtype": dtype, "size": size, "seconds": seconds, "tflops_per_s": 2 * size ** 3 / seconds / 1e12}


def random_batch(config):
  """A train batch as the pipeline makes it: uint8 pixels (the train step normalises them) and labels."""
  m, b, rng = config.model, config.batch_size, np.random.default_rng(0)
  return {"video": rng.integers(0, 256, (b, m.num_frames, m.image_size, m.image_size, 3), dtype=np.uint8),
          "label": rng.integers(0, m.num_classes, b).astype(np.int32)}


def forward(model_cfg, dtype, video):
  """(no-argument call, compiled): the jitted inference forward of a fresh model on `video`."""
  graphdef, state = nnx.split(create_model(model_cfg, dtype=dtype))
  compiled = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v)).lower(state, video).compile()
  return (lambda: compiled(state, video)), compiled


def _train_step(config):
  """(no-argument call, compiled): the train loop's own step (train.make_train_step over config.mesh) on
  random clips, the state carried from call to call (it is donated). The state is state.create's, made
  eagerly and then placed (compiling state.create's initialiser takes seconds per config)."""
  mesh = sharding.make_mesh(config.mesh)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  graphdef, _, shardings = state_lib.abstract(config, tx, mesh)
  params = nnx.state(create_model(config.model, dtype=config.dtype, seed=config.seed), nnx.Param)
  state = jax.device_put(state_lib.initial(params, tx, config.seed), shardings)
  batch = sharding.global_batch(mesh, random_batch(config))
  step = train.make_train_step(config, graphdef, tx, schedule, shardings=shardings).lower(state, batch).compile()
  carried = [state]

  def train_once():
    carried[0], metrics = step(carried[0], batch)
    return carried[0], metrics

  return train_once, step


def train_and_infer_speed(configs, steps):
  """Throughput of the jitted train step and of the jitted forward of each config (same frames, different
  attention), the variants taking turns step by step so that the machine's drift hits them alike."""
  gflops = lambda c: c.cost_analysis()["flops"] / 1e9
  trains = [_train_step(config) for config in configs]
  train_s = median_times([fn for fn, _ in trains], steps)
  records = [{"variant": c.model.attention, "frames": c.model.num_frames, "batch": c.batch_size, "train_step_s": t,
              "train_clips_per_s": c.batch_size / t, "train_step_gflops": gflops(compiled),
              "train_step_bytes_xla": memory(compiled)} for c, (_, compiled), t in zip(configs, trains, train_s)]
  del trains  # free the train states before the forwards' models (joint attention is large)
  infers = [forward(c.model, c.dtype, preprocess.normalize(random_batch(c)["video"])) for c in configs]
  infer_s = median_times([fn for fn, _ in infers], steps)
  for r, c, (_, compiled), t in zip(records, configs, infers, infer_s):
    r.update(infer_s=t, infer_clips_per_s=c.batch_size / t, infer_gflops=gflops(compiled), peak_bytes_so_far=memory())
  return records


def guarded(measure, configs, steps):
  """measure(configs, steps), or, where the device runs out of memory, each config measured alone and a
  record saying so for those that do not fit."""
  try:
    return measure(configs, steps)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
      raise
    if len(configs) > 1:
      return [r for config in configs for r in guarded(measure, [config], steps)]
    return [{"variant": configs[0].model.attention, "frames": configs[0].model.num_frames, "error": "out of memory"}]


def shift_share(config, steps):
  """Forward time of X-ViT against the same model with shift_layers="none", taking turns; share =
  (xvit - none) / xvit, the fraction of the forward that the space-time mixing itself costs."""
  video = preprocess.normalize(random_batch(config)["video"])
  models = [ml_collections.ConfigDict({**config.model.to_dict(), "attention": "xvit", "shift_layers": layers})
            for layers in ("all", "none")]
  xvit, none = median_times([forward(model, config.dtype, video)[0] for model in models], steps)
  return {"frames": config.model.num_frames, "xvit_forward_s": xvit, "no_shift_forward_s": none,
          "share": (xvit - none) / xvit}


def official_comparison(preset, steps):
  """Inference of one clip (8 frames, batch 1, the TA head) by the official PyTorch forward in float32
  (convert/official_torch.py, same weights) against ours in float32 and bfloat16, taking turns; None
  without torch. Also the largest logit difference between the two float32 models."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from xvit_jax.convert import official, official_torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count())
  common = config_lib.import_file("../configs/common.py", next_to=__file__)
  c = common.official_xvit_b16(num_classes=400, shift_segment=8, shift_div=4)
  c.model.update({**PRESETS[preset]["model"], "num_frames": 8})
  params = nnx.to_pure_dict(nnx.state(create_model(c.model), nnx.Param))  # seed 0, as forward() builds it
  reference = official_torch.OfficialXViT(official.export_state_dict(params, c.model), num_segments=8, shift_div=4,
                                          heads=c.model.num_heads)
  video = np.random.default_rng(0).uniform(-1, 1, (1, 8, c.model.image_size, c.model.image_size, 3)).astype(np.float32)
  video_torch = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)))
  ours_f32, compiled = forward(c.model, "float32", jnp.asarray(video))
  ours_bf16, _ = forward(c.model, "bfloat16", jnp.asarray(video))
  theirs = lambda: reference(video_torch).numpy()
  difference = np.abs(np.asarray(ours_f32()) - theirs()).max() / np.abs(theirs()).max()
  t_theirs, t_f32, t_bf16 = median_times([theirs, ours_f32, ours_bf16], steps)
  return {"frames": 8, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
          "gflops": compiled.cost_analysis()["flops"] / 1e9, "official_f32_s": t_theirs, "ours_f32_s": t_f32,
          "ours_bf16_s": t_bf16, "speedup_f32": t_theirs / t_f32, "speedup_bf16": t_theirs / t_bf16,
          "max_logit_difference": float(difference)}


def run(preset="quick", dtype="float32", variants=VARIANTS, steps=None, batch=None, matmul_size=None,
        attention_impl="xla", speed_only=False):
  """Every measurement (speed_only: the cost, the peak and the speed); returns the JSON-ready results.
  attention_impl: the speed section's model.attention_impl (the cost is XLA's count of the xla path)."""
  p = PRESETS[preset]
  steps = steps or p["steps"]
  batch = batch or (1 if jax.default_backend() == "cpu" else 8)
  # checked before anything is measured: an attention_impl this machine cannot run is one line, not minutes later
  make_config(preset, variants[0], p["speed_frames"][0], dtype=dtype, batch=batch, attention_impl=attention_impl)
  results = {"meta": {"preset": preset, "dtype": dtype, "batch": batch, "steps": steps, "variants": list(variants),
                      "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
                      "devices": jax.device_count(), "cpus": os.cpu_count(), "jax": jax.__version__,
                      "attention_impl": attention_impl}}
  results["cost"] = model_cost(preset, variants, p["cost_frames"])
  results["paper_gflops"] = {str(t): g for t, g in PAPER_GFLOPS.items()} if preset == "full" else None
  results["peak"] = peak = matmul_peak(dtype, matmul_size)
  # spatial and xvit take turns (their ratio is the claim); the others, large, are measured alone
  groups = [[v for v in variants if v in ("spatial", "xvit")]] + [[v] for v in variants if v not in ("spatial", "xvit")]
  results["speed"] = [r for t in p["speed_frames"] for group in groups if group for r in guarded(
      train_and_infer_speed, [make_config(preset, v, t, dtype=dtype, batch=batch, attention_impl=attention_impl)
                              for v in group], steps)]
  ok = [s for s in results["speed"] if "error" not in s]
  for r in ok:
    base = next((s for s in ok if s["variant"] == "spatial" and s["frames"] == r["frames"]), None)
    r["train_ratio_vs_spatial"] = base and r["train_step_s"] / base["train_step_s"]
    r["train_mfu"] = r["train_step_gflops"] / r["train_step_s"] / 1e3 / peak["tflops_per_s"]
    r["infer_mfu"] = r["infer_gflops"] / r["infer_s"] / 1e3 / peak["tflops_per_s"]
  if speed_only:
    return {**results, "shift": [], "input": None, "official": None}
  results["shift"] = [shift_share(make_config(preset, "xvit", t, dtype=dtype, batch=batch), steps)
                      for t in p["speed_frames"]]
  frames = p["input_frames"]  # the input is compared with xvit's train step at these frames (or the last measured)
  model = next((s for s in ok if s["variant"] == "xvit" and s["frames"] == frames), ok[-1] if ok else None)
  results["input"] = input_benchmark.input_speed(make_config(preset, "xvit", frames), p["input_clips"],
                                                 model and model["train_clips_per_s"])
  results["input"]["model"] = model and f"{model['variant']}, {model['frames']} frames, batch {model['batch']}"
  results["official"] = official_comparison(preset, steps)
  return results


def markdown(r):
  """The results as markdown tables."""
  def _table(header, rows):
    return ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + [
        "| " + " | ".join(str(x) for x in row) + " |" for row in rows]

  m, pk, i = r["meta"], r["peak"], r["input"]
  impl = m.get("attention_impl", "xla")
  _num = lambda x: "n/a" if x is None else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"
  pct, gib = lambda x: f"{100 * x:.1f}%", lambda n: "n/a" if n is None else f"{n / 2 ** 30:.2f}"
  frames = sorted({c["frames"] for c in r["cost"]})
  gflops = {(c["variant"], c["frames"]): c["gflops"] for c in r["cost"]}
  cost = [[v] + [_num(gflops[v, t]) for t in frames] + [f"{gflops[v, frames[-1]] / gflops[v, frames[0]]:.2f}"]
          for v in m["variants"]]
  if r["paper_gflops"]:
    cost.append(["paper (2 x GMAC / 3 views)"] + [_num(r["paper_gflops"].get(str(t))) for t in frames] + [""])
  lines = [f"# xvit_jax benchmark: {m['preset']}, {m['dtype']}, {m['devices']} x {m['device']} ({m['backend']})",
           "", "## Model cost: forward GFLOPs per clip (XLA cost analysis, float32)"]
  lines += _table(["attention"] + [f"{t} frames" for t in frames] + [f"{frames[-1]} / {frames[0]}"], cost)
  lines += ["", f"## Speed: batch {m['batch']}, median of {m['steps']} steps, attention_impl {impl}; MFU against a "
            f"{pk['size']}^2 {pk['dtype']} matmul at {pk['tflops_per_s']:.3g} TFLOP/s"]
  ratio = lambda x: "n/a" if x is None else f"{x:.2f}"
  speed = [[s["variant"], s["frames"], s["error"]] + [""] * 7 if "error" in s else
           [s["variant"], s["frames"], _num(s["train_clips_per_s"]), _num(1e3 * s["train_step_s"]),
            ratio(s["train_ratio_vs_spatial"]), pct(s["train_mfu"]), _num(s["infer_clips_per_s"]),
            pct(s["infer_mfu"]), gib(s["train_step_bytes_xla"]), gib(s["peak_bytes_so_far"])] for s in r["speed"]]
  lines += _table(["attention", "frames", "train clips/s", "step ms", "step / spatial", "train MFU",
                   "infer clips/s", "infer MFU", "XLA step GiB", "peak GiB so far"], speed)
  if i is None:  # --speed_only
    return "\n".join(lines)
  lines += ["", "## The shift's own share of the X-ViT forward (against shift_layers=none)"]
  lines += _table(["frames", "xvit forward ms", "no-shift forward ms", "share"],
                  [[s["frames"], _num(1e3 * s["xvit_forward_s"]), _num(1e3 * s["no_shift_forward_s"]),
                    pct(s["share"])] for s in r["shift"]])
  lines += ["", f"## Input: one worker, {i['frames']} frames at {i['image_size']}; the model ({i['model']}) "
            f"trains {_num(i['model_train_clips_per_s'])} clips/s"]
  lines += _table(["source", "clips/s per worker", "keeps up", "workers needed"],
                  [[s["source"], _num(s["clips_per_s"]), {True: "yes", False: "no"}.get(s["keeps_up"], "n/a"),
                    s["workers_needed"] or "n/a"] for s in i["sources"]])
  if r.get("official"):
    lines += official_markdown(r["official"], {pk["dtype"]: pk})
  return "\n".join(lines)


def official_markdown(o, peaks):
  """The official comparison as markdown lines; `peaks` {dtype: matmul_peak record} adds the fraction of
  the same-dtype matmul peak."""
  of_peak = lambda dtype, seconds: (f"{100 * o['gflops'] / seconds / 1e3 / peaks[dtype]['tflops_per_s']:.0f}%"
                                    if dtype in peaks else "n/a")
  rows = [["official PyTorch, float32", o["official_f32_s"], 1.0, "float32"],
          ["xvit_jax, float32", o["ours_f32_s"], o["speedup_f32"], "float32"],
          ["xvit_jax, bfloat16", o["ours_bf16_s"], o["speedup_bf16"], "bfloat16"]]
  lines = ["", f"## Against the official PyTorch forward (torch {o['torch']}, {o['torch_threads']} threads): one clip, "
           f"{o['frames']} frames, batch 1, the TA head, the same weights, taking turns"]
  lines += ["", "| implementation | s per clip | speed-up over official float32 | GFLOP/s (XLA count) | of the same-dtype matmul peak |",
            "|---|---|---|---|---|"]
  lines += [f"| {name} | {sec:.3f} | {up:.2f} | {o['gflops'] / sec:.1f} | {of_peak(dtype, sec)} |"
            for name, sec, up, dtype in rows]
  return lines + ["", f"Largest float32 logit difference, ours against official: {o['max_logit_difference']:.2e} "
                      "of the largest logit."]


def plot(r, path):
  """Two panels against frames: train step time (speed frames) and forward GFLOPs (cost frames)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  m = r["meta"]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  for v in m["variants"]:
    s = [x for x in r["speed"] if x["variant"] == v and "error" not in x]
    left.plot([x["frames"] for x in s], [1e3 * x["train_step_s"] for x in s], "o-", label=v)
    c = [x for x in r["cost"] if x["variant"] == v]
    right.plot([x["frames"] for x in c], [x["gflops"] for x in c], "o-", label=v)
  if r["paper_gflops"]:
    right.plot([int(t) for t in r["paper_gflops"]], list(r["paper_gflops"].values()), "kx", ms=9, label="paper (X-ViT)")
  left.set(title=f"train step, batch {m['batch']}, {m['dtype']}, {m['device']}", xlabel="frames", ylabel="ms")
  right.set(title="forward GFLOPs per clip (XLA)", xlabel="frames", ylabel="GFLOPs")
  for ax, points in ((left, r["speed"]), (right, r["cost"])):
    ax.set_xticks(sorted({x["frames"] for x in points}))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def input_only(f):
  """--input_only: one worker's input on --config's prepared dataset (or one it prepares), its line printed
  and its record merged into --out as "input"."""
  record = input_benchmark.run(f.config, records=f.input_records, passes=f.input_passes)
  print(input_benchmark.line(record))
  results = {}
  if f.out and os.path.exists(f.out):
    with open(f.out) as existing:
      results = json.load(existing)
  return {**results, "input": record}


def main():
  f = flags.FLAGS
  if f.config is not None and not f.input_only:
    raise app.UsageError("--config is for --input_only (the other sections measure their own models)")
  if f.input_only:
    results = input_only(f)
  elif f.official_only:
    results = {"peak": {d: matmul_peak(d, f.matmul_size) for d in ("float32", "bfloat16")},
               "official": official_comparison(f.preset, f.steps or PRESETS[f.preset]["steps"])}
    if results["official"] is None:
      raise app.UsageError("--official_only needs torch: pip install -r requirements-torch.txt")
    print("\n".join(official_markdown(results["official"], results["peak"])))
  else:
    results = run(f.preset, f.dtype, f.variants, f.steps, f.batch, f.matmul_size, f.attention_impl, f.speed_only)
    print(markdown(results))
  if f.out:
    with open(f.out, "w") as out:
      json.dump(results, out, indent=1)
  if f.plot and not f.input_only:
    plot(results, f.plot)


if __name__ == "__main__":
  flags.DEFINE_enum("preset", "full", list(PRESETS), "quick: tiny model, under a minute on 2 CPU cores; full: ViT-B/16")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype of the model and the peak matmul")
  flags.DEFINE_list("variants", list(VARIANTS), "attention variants to measure")
  flags.register_validator("variants", lambda v: set(v) <= set(VARIANTS), f"--variants: some of {', '.join(VARIANTS)}")
  flags.DEFINE_integer("steps", None, "timed steps per measurement (median); default: the preset's (quick 10, full 5)")
  flags.DEFINE_integer("batch", None, "clips per train/inference step; default 1 on CPU, 8 on accelerators")
  flags.DEFINE_integer("matmul_size", None, "side of the peak matmul; default 2048 on CPU, 8192 on accelerators")
  flags.DEFINE_bool("official_only", False, "only the comparison with the official PyTorch forward (needs torch), "
                    "with the float32 and bfloat16 matmul peaks")
  flags.DEFINE_bool("input_only", False, "only one data worker's input throughput (train clips/s, eval videos/s) "
                    "on --config's prepared dataset, or without --config on a small one it prepares")
  config_flags.DEFINE_config_file("config", None, "--input_only: the experiment config whose input to measure")
  flags.DEFINE_integer("input_records", None, "--input_only: records per pass (default 8; 4 without --config)",
                       lower_bound=1)
  flags.DEFINE_integer("input_passes", 5, "--input_only: timed passes (the median is reported)", lower_bound=1)
  flags.DEFINE_enum("attention_impl", "xla", ["xla", "cudnn"], "the speed section's model.attention_impl (cudnn: an "
                    "NVIDIA GPU and --dtype=bfloat16, else refused in one line)")
  flags.DEFINE_bool("speed_only", False, "only the model cost, the matmul peak and the speed (train step, forward, "
                    "MFU): no shift share, input or official comparison")
  flags.DEFINE_string("out", None, "write the results here as JSON (--input_only: merged into an existing file)")
  flags.DEFINE_string("plot", None, "write the plot here (PNG)")
  cli.run(main)
