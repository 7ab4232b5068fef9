"""Shared test helpers: tiny configs, config files with command-line overrides, encoded videos, and
`python -m xvit_jax.main` run as a process (exit codes, stderr, signals, devices) or in this one."""

import ast
import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import official_numpy as a plain module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One XLA compilation cache for the session, shared by this process and every process a test starts (they
# inherit the environment): the same tiny train step is compiled once, not by each of the dozens of runs.
# The cache is keyed by the program, the compile options and the devices, so it changes no result.
_CACHE = tempfile.mkdtemp(prefix="xvit-jax-test-xla-cache-")
os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

# The tests run on the CPU, and so does every process they start (it inherits the environment): where jax
# would find TPU chips and the libtpu of requirements-test.txt, it would otherwise start the TPU backend and its
# logging (tools.plan compiles for TPU slices without it: tests/test_plan.py).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# configs/demo.py shrunk for the command-line tests: `--config=configs/demo.py *TINY`
TINY = ["--config.model.hidden_size=32", "--config.model.mlp_dim=64", "--config.model.num_layers=2",
        "--config.model.image_size=16", "--config.model.num_frames=4", "--config.data.object_size=4",
        "--config.data.eval_size=10", "--config.batch_size=8", "--config.log_every=2", "--config.eval_every=2",
        "--config.optimizer.warmup_steps=1"]


def tiny_config(**model):
  """The demo config shrunk further; keyword arguments override config.model fields."""
  from xvit_jax import config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.base_config()
  c.batch_size, c.total_steps, c.log_every, c.eval_every = 4, 4, 2, 0
  c.optimizer.warmup_steps = 1
  m = c.model
  m.image_size, m.patch_size, m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim = 16, 8, 32, 2, 4, 64
  m.num_frames, m.num_classes, m.dropout, m.consensus = 4, 3, 0.0, "avg"
  c.data.object_size, c.data.speed, c.data.eval_size, c.data.workers = 4, 2.0, 8, 0
  for key, value in model.items():
    m[key] = value
  return c


# ---------------------------------------------------------------------------------------------- config files

def load_config(path, arg=None):
  """get_config() (or get_config(arg)) of a config file, its path absolute or relative to the repository."""
  path = os.path.join(REPO, path)
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def _parse(old, text):
  if isinstance(old, bool):
    return text.lower() in ("true", "1")
  if isinstance(old, (int, float, str)):
    return type(old)(text)
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def override(config, *args):
  """`config` with "--config.a.b=value" arguments applied, as the command line applies them."""
  for arg in args:
    field, text = arg[len("--config."):].split("=", 1)
    *groups, name = field.split(".")
    node = config
    for group in groups:
      node = node[group]
    node[name] = _parse(node[name], text)
  return config


def main_config(*overrides):
  """What `--config=configs/demo.py *TINY *overrides` gives."""
  return override(load_config("configs/demo.py"), *TINY, *overrides)


# configs/official/k600_xvit_b16.py shrunk: 2 layers of width 32 on 32x32 frames, 5 classes
OFFICIAL_SMALL = ["--config.model.hidden_size=32", "--config.model.num_heads=4", "--config.model.mlp_dim=128",
                  "--config.model.num_layers=2", "--config.model.patch_size=8", "--config.model.image_size=32",
                  "--config.model.num_classes=5", "--config.data.label_names=", "--config.data.workers=0"]

# configs/demo.py (32 px, 8 px patches, 64 wide, 4 classes, avg consensus), shallower, on 4 frames, 3 crops
DEMO_4_FRAMES = ["--config.model.num_layers=2", "--config.model.num_frames=4", "--config.model.mlp_dim=256",
                 "--config.eval.stride=10", "--config.eval.spatial_crops=3"]


def official_small_config():
  return override(load_config("configs/official/k600_xvit_b16.py"), *OFFICIAL_SMALL)


def demo_config(*overrides):
  """configs/demo.py with DEMO_4_FRAMES and then `overrides` applied."""
  return override(load_config("configs/demo.py"), *DEMO_4_FRAMES, *overrides)


def make_checkpoint(directory, config, *, step=0, seed=3, metrics=None):
  """Parameters drawn from `seed` (not config.seed) saved as `step`, with `metrics` as training saves them."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from xvit_jax import checkpoints  # pylint: disable=import-outside-toplevel
  from xvit_jax.models import create_model  # pylint: disable=import-outside-toplevel
  params = nnx.to_pure_dict(nnx.state(create_model(config.model, seed=seed), nnx.Param))
  mngr = checkpoints.manager(str(directory))
  checkpoints.save(mngr, step, params, metrics=metrics)
  mngr.wait_until_finished()
  mngr.close()


def import_official(config, weights, output):
  """What tools.import_official does: the official state dict in `weights` as a checkpoint in `output`."""
  from xvit_jax import checkpoints  # pylint: disable=import-outside-toplevel
  from xvit_jax.convert import official, pretrained  # pylint: disable=import-outside-toplevel
  from xvit_jax.models import abstract_params  # pylint: disable=import-outside-toplevel
  params = official.import_params(pretrained.read_weights(str(weights)), config.model, abstract_params(config.model))
  checkpoints.write_params(str(output), params)


def final_params(workdir, model=None):
  """The parameters of the newest checkpoint in workdir, of `model` (default: main_config()'s)."""
  import jax  # pylint: disable=import-outside-toplevel
  from xvit_jax import checkpoints  # pylint: disable=import-outside-toplevel
  from xvit_jax.models import abstract_params  # pylint: disable=import-outside-toplevel
  template = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract_params(model or main_config().model))
  return checkpoints.latest_params(str(workdir), template)[1]


# ---------------------------------------------------------------------------------------------- xvit_jax.main

def cpu_env(devices=1):
  """This environment on the CPU with `devices` host devices (XLA reads it when JAX starts)."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")


def run_module(module, *args, devices=None, cwd=REPO, wrapper=(), timeout=300):
  """`python -m module *args` to the end; `wrapper` goes before python (e.g. a shell setting a ulimit)."""
  return subprocess.run([*wrapper, sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, env=cpu_env(devices) if devices else None)


def tool(name, *args):
  """`python -m xvit_jax.tools.NAME` on OFFICIAL_SMALL."""
  return run_module(f"xvit_jax.tools.{name}", "--config=configs/official/k600_xvit_b16.py", *OFFICIAL_SMALL, *args)


def export_tool(*args):
  """`python -m xvit_jax.tools.export` on DEMO_4_FRAMES."""
  return run_module("xvit_jax.tools.export", "--config=configs/demo.py", *DEMO_4_FRAMES, *args)


def run_main(workdir, *overrides, devices=1, wrapper=()):
  """`python -m xvit_jax.main --config=configs/demo.py --workdir=workdir *TINY *overrides` to the end."""
  return run_module("xvit_jax.main", "--config=configs/demo.py", f"--workdir={workdir}", *TINY, *overrides,
                    devices=devices, wrapper=wrapper)


def start_main(workdir, *overrides, collect=True):
  """run_main's command as a running process. collect: its stdout lines are gathered as they come in
  `process.lines` (stderr is dropped); otherwise both are pipes for `communicate`."""
  process = subprocess.Popen(
      [sys.executable, "-m", "xvit_jax.main", "--config=configs/demo.py", f"--workdir={workdir}", *TINY, *overrides],
      cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if collect else subprocess.PIPE,
      text=True)
  if collect:
    process.lines = []
    process.reader = threading.Thread(target=lambda: process.lines.extend(iter(process.stdout.readline, "")),
                                      daemon=True)
    process.reader.start()
  return process


def train_main(workdir, *overrides, mode="train", config=None):
  """run_main's run (or that of `config` with `overrides`) in this process, on one device, as main calls
  train_and_evaluate: (what it printed, what it returned)."""
  from xvit_jax import train  # pylint: disable=import-outside-toplevel
  config = main_config(*overrides) if config is None else override(config, *overrides)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = train.train_and_evaluate(config, str(workdir), mode=mode)
  return out.getvalue(), result


def wait_for(predicate, process, timeout=120):
  """Polls `predicate` while `process` runs."""
  deadline = time.time() + timeout
  while not predicate():
    assert process.poll() is None, "the run ended before it could be interrupted"
    assert time.time() < deadline, "timed out"
    time.sleep(0.005)


def last_line(result):
  lines = result.stderr.strip().splitlines()
  return lines[-1] if lines else ""


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def saved_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(path) if name.isdigit()) if os.path.isdir(path) else []


# ---------------------------------------------------------------------------------------------- videos

def write_video(path, frames, codec="libx264", rate=25, pix_fmt="yuv420p", **container_options):
  """Encodes uint8 frames (T, H, W, 3) to `path` (a file, or a BytesIO with format="mp4"); returns path."""
  import av  # pylint: disable=import-outside-toplevel
  target = path
  if isinstance(path, (str, os.PathLike)):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    target = str(path)
  with av.open(target, "w", **container_options) as container:
    stream = container.add_stream(codec, rate=rate)
    stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], pix_fmt
    for image in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
    container.mux(stream.encode())
  return path


def mp4_bytes(frames):
  buffer = io.BytesIO()
  write_video(buffer, frames, format="mp4")
  return buffer.getvalue()


def grey_frames(num, height, width, level):
  return np.stack([np.full((height, width, 3), level(i), np.uint8) for i in range(num)])


def grey(i):
  return 5 * i + 20


def grey_video(path, num=12, height=48, width=64, codec="libx264", rate=25, level=grey):
  """A video of `num` flat frames, frame i of grey `level(i)`: their order and count survive a lossy codec."""
  return write_video(path, grey_frames(num, height, width, level), codec, rate)


# ---------------------------------------------------------------------------------------------- datasets

def write_csv(path, header, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([header, *rows])


def prepare(tmp, name, *extra, returncode=0):
  """`python -m xvit_jax.data.prepare` from tmp/manual to tmp/data as a user runs it: (stdout + stderr, seconds)."""
  start = time.time()
  run = run_module("xvit_jax.data.prepare", f"--dataset={name}", f"--manual_dir={tmp / 'manual'}",
                   f"--data_dir={tmp / 'data'}", "--workers=2", *extra, timeout=300)
  assert run.returncode == returncode, run.stdout + run.stderr
  return (run.stderr if returncode else run.stdout + run.stderr), time.time() - start


def train_smoke(tmp, config):
  """`main --config=CONFIG:smoke` (in this process) on what prepare wrote in tmp/data: 3 training steps and
  an evaluation; the metrics it wrote."""
  stdout, _ = train_main(tmp / "run", f"--config.data.data_dir={tmp / 'data'}", "--config.data.workers=0",
                         config=load_config(config, "smoke"))
  assert "step 3/3 | loss" in stdout and "eval at step 3: top1" in stdout
  assert "  total_steps 3 (set explicitly)\n  optimizer.warmup_steps 1 (set explicitly)" in stdout  # the schedule
  assert "  optimizer.learning_rate 0.03 = base_learning_rate 0.03 x 1 (lr_scaling none" in stdout
  return read_metrics(tmp / "run")


@pytest.fixture
def repo():
  return REPO


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long end-to-end checks (minutes); run with -m slow")


def pytest_unconfigure(config):
  shutil.rmtree(_CACHE, ignore_errors=True)
