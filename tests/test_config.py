"""Configs: every shipped config and preset loads (as main loads it) with the values it always had and
passes the start-up checks; every bad value, unknown field or missing file stops a command in one line; a
recipe's schedule in epochs follows the batch, and --mode=config shows it."""

import glob
import json
import os
import subprocess
import sys

import pytest
from absl import flags
import ml_collections
from ml_collections import config_dict, config_flags

from conftest import REPO, tiny_config
from xvit_jax import config_lib, labels, optim
from xvit_jax.data import label_heads, registry
from xvit_jax.errors import UserError

BAD = [
    ({"model.attention": "full"}, "config.model.attention='full'", "xvit, spatial, joint, divided"),
    ({"model.consensus": "max"}, "config.model.consensus='max'", "avg, temporal_attention"),
    ({"model.num_frames": 6, "model.shift_segment": 4}, "config.model.num_frames=6", "shift_segment=4"),
    ({"model.image_size": 20}, "config.model.image_size=20", "patch_size=8"),
    ({"batch_size": 6}, "config.batch_size=6", "mesh data=4 x fsdp=1 = 4 devices"),
    ({"model.hidden_size": 30}, "config.model.hidden_size=30", "num_heads=4"),
    ({"model.shift_div": 1}, "config.model.shift_div=1", "at least 2"),
    ({"model.shift_layers": "0,7"}, "config.model.shift_layers='0,7'", "0..1"),
    ({"model.shift_layers": "first"}, "config.model.shift_layers='first'", '"all"'),
    ({"model.summary_tokens": 1, "model.attention": "joint"}, "config.model.summary_tokens=1", "xvit or spatial"),
    ({"model.attention_impl": "flash"}, "config.model.attention_impl='flash'", "xla, cudnn"),
    ({"model.attention_impl": "cudnn"}, "config.model.attention_impl='cudnn'", "xla with dtype=float32"),
    ({"model.attention_impl": "cudnn", "dtype": "bfloat16"}, "config.model.attention_impl='cudnn'",
     "cudnn needs an NVIDIA GPU"),
    ({"model.dropout": 1.5}, "config.model.dropout=1.5", "[0, 1)"),
    ({"model.remat_policy": "some"}, "config.model.remat_policy='some'", "one of none, full, dots"),
    ({"model.remat": True, "model.remat_policy": "none"}, "config.model.remat_policy='none'", "model.remat=True"),
    ({"model.num_frames": 0}, "config.model.num_frames=0", "positive integer"),
    ({"dtype": "float64"}, "config.dtype='float64'", "bfloat16"),
    ({"data.name": "kinetics"}, "config.data.name='kinetics'", "synthetic"),
    ({"optimizer.learning_rate": 0.0}, "config.optimizer.learning_rate=0.0", "positive"),
    ({"model.consensus": "temporal_attention", "model.head.num_heads": 5}, "config.model.head.num_heads=5", "divisor"),
    ({"eval.sampling": "uniform"}, "config.eval.sampling='uniform'", "dense, segment"),
    ({"eval.spatial_crops": 2}, "config.eval.spatial_crops=2", "1 or 3"),
    ({"eval.sampling": "segment", "eval.temporal_views": 4}, "config.eval.temporal_views=4", "1..3"),
    ({"data.label_names": "kinetics400"}, "config.data.label_names='kinetics400'", "kinetics600"),
    ({"data.label_names": "kinetics600"}, "config.data.label_names='kinetics600'", "num_classes=3 names (it has 600)"),
    ({"mesh.data": 2, "mesh.fsdp": 4}, "config.mesh data=2 fsdp=4 frames=1 tensor=1", "needs 8 devices, there are 4"),
    ({"mesh.fsdp": 3}, "config.mesh data=-1 fsdp=3 frames=1 tensor=1", "4 is not a multiple of 3"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "config.mesh data=-1 fsdp=-1 frames=1 tensor=1", "at most one -1"),
    ({"mesh.data": 0}, "config.mesh data=0 fsdp=1 frames=1 tensor=1", "sizes are positive"),
    ({"grad_accum_steps": 3}, "config.batch_size=4", "grad_accum_steps=3 micro-batches"),
    ({"grad_accum_steps": 0}, "config.grad_accum_steps=0", "positive integer"),
    ({"checkpoint_keep": 0}, "config.checkpoint_keep=0", "positive integer"),
    ({"optimizer.warmup_steps": 4}, "config.optimizer.warmup_steps=4", "fewer than total_steps=4"),
    ({"epochs": 0}, "config.epochs=0", "positive integer"),
    ({"epochs": 4, "warmup_epochs": 4}, "config.warmup_epochs=4", "below epochs=4"),
    ({"warmup_epochs": -1}, "config.warmup_epochs=-1", "an integer >= 0"),
    ({"optimizer.lr_scaling": "cube"}, "config.optimizer.lr_scaling='cube'", "one of linear, sqrt, none"),
    ({"optimizer.base_batch": 0}, "config.optimizer.base_batch=0", "positive integer"),
    ({"data.train_videos": 0}, "config.data.train_videos=0", "positive integer"),
    ({"optimizer.base_learning_rate": 0.0}, "config.optimizer.base_learning_rate=0.0", "positive number"),
    ({"total_steps": None}, "config.total_steps=None", "set it, or config.epochs to derive it"),
    ({"total_steps": None, "epochs": 2, "data.train_videos": 3}, "config.batch_size=4", "at most data.train_videos=3"),
    ({"peak_flops_per_device": -1e12}, "config.peak_flops_per_device=-1000000000000.0", "or 0: from the table"),
    ({"peak_flops_per_device": float("nan")}, "config.peak_flops_per_device=nan", "FLOP/s per device > 0"),
    ({"profile_steps": "3-2"}, "config.profile_steps='3-2'", "START:COUNT, two positive integers"),
    ({"profile_steps": "0:2"}, "config.profile_steps='0:2'", "START:COUNT, two positive integers"),
    ({"profile_steps": "4:2"}, "config.profile_steps='4:2'", "within 1..total_steps=4"),
]


def with_overrides(overrides):
  c = tiny_config()
  for field, value in overrides.items():
    node = c
    *parents, leaf = field.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


@pytest.mark.parametrize("overrides,culprit,allowed", BAD)
def test_bad_values_are_named_in_one_line(overrides, culprit, allowed):
  with pytest.raises(UserError) as error:
    config_lib.check(with_overrides(overrides), num_devices=4)
  message = str(error.value)
  assert "\n" not in message
  assert culprit in message and allowed in message


def test_the_defaults_and_the_tiny_test_config_pass():
  config_lib.check(tiny_config(), num_devices=4)
  config_lib.check(config_lib.base_config(), num_devices=8)


def test_main_prints_one_line_and_exits_2(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "xvit_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path}",
       "--config.model.attention=fancy"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert lines[-1] == ("error: config.model.attention='fancy' is not allowed: one of xvit, spatial, joint, divided")
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "checkpoints").exists()


def run(module, *args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))


def assert_one_line_exit_2(result, expected):
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [expected]


def test_an_unknown_field_is_named_with_the_nearest_ones(tmp_path):
  result = run("xvit_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path}", "--config.model.num_head=2")
  assert_one_line_exit_2(result, "error: --config.model.num_head=2: configs/demo.py has no field config.model.num_head;"
                         " nearest: config.model.num_heads, config.model.head, config.model.num_layers")


def test_a_missing_config_file_is_named(tmp_path):
  result = run("xvit_jax.main", "--config=configs/no_such.py", f"--workdir={tmp_path}")
  assert_one_line_exit_2(result,
                         f"error: --config=configs/no_such.py: there is no config file {REPO}/configs/no_such.py")


def test_the_tools_name_unknown_fields_and_missing_files_too(tmp_path):
  demo = f"{REPO}/configs/demo.py"
  result = run("xvit_jax.tools.export", f"--config={demo}", "--checkpoint=x", f"--output={tmp_path}/a",
               "--config.optimizer.lr=1", cwd=tmp_path)
  assert_one_line_exit_2(result, f"error: --config.optimizer.lr=1: {demo} has no field config.optimizer.lr; nearest: "
                         "config.optimizer.lr_scaling, config.optimizer.learning_rate, config.optimizer.warmup_start_lr")
  result = run("xvit_jax.predict", "--config=k400.py:8", "--checkpoint=x", "--video=v.mp4", cwd=tmp_path)
  assert_one_line_exit_2(result, f"error: --config=k400.py:8: there is no config file {tmp_path}/k400.py")


# ------------------------------------------------------------------------------------------ shipped configs

SNAPSHOT = os.path.join(os.path.dirname(__file__), "data", "config_snapshot.json")
SHIPPED = sorted(os.path.relpath(p, REPO) for p in glob.glob(f"{REPO}/configs/**/*.py", recursive=True)
                 if not p.endswith("/common.py"))  # common.py: the shared base, not a config


def load(spec, *, cwd):
  """`spec` (path[:arg]) loaded as main loads --config (ml_collections' config flag, absl parsing), in `cwd`."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=["main"])
  here = os.getcwd()
  os.chdir(cwd)
  try:
    flag_values(["main", f"--config={spec}"])
    return flag_values.config
  finally:
    os.chdir(here)


def leaves(config, prefix=""):
  """{"model.num_frames": [value, type], ...}: every field's value (tuples as lists) and declared type."""
  out = {}
  for key in config.keys():
    value, field = config[key], config._fields[key]  # pylint: disable=protected-access
    if isinstance(value, config_dict.ConfigDict):
      out.update(leaves(value, f"{prefix}{key}."))
    else:
      kind = field.get_type() if isinstance(field, config_dict.FieldReference) else type(value)
      out[prefix + key] = [list(value) if isinstance(value, tuple) else value, kind.__name__]
  return out


def test_every_shipped_config_is_in_the_snapshot():
  with open(SNAPSHOT) as f:
    specs = json.load(f)
  assert sorted({spec.split(":")[0] for spec in specs} - {"base_config"}) == SHIPPED


@pytest.mark.parametrize("spec", [s for s in json.load(open(SNAPSHOT)) if s != "base_config"])
def test_configs_and_presets_keep_their_values_from_any_directory(spec, tmp_path):
  """tests/data/config_snapshot.json: every field of every config and preset, written from the code before
  the recipes moved from xvit_jax/config_lib.py to configs/ (and the sections to their modules); rewritten
  by `write_snapshot` only for a deliberate change, named in its commit."""
  with open(SNAPSHOT) as f:
    expected = json.load(f)[spec]
  assert leaves(load(f"{REPO}/{spec}", cwd=tmp_path)) == expected  # an absolute path, elsewhere
  assert leaves(load(spec, cwd=REPO)) == expected  # the README's relative path, from the checkout


def test_base_config_keeps_its_fields():
  with open(SNAPSHOT) as f:
    assert leaves(config_lib.base_config()) == json.load(f)["base_config"]


def test_a_config_loads_from_the_filesystem_root():
  assert load(f"{REPO}/configs/official/ssv2_xvit_b16.py", cwd="/").model.shift_segment == 16


@pytest.mark.parametrize("path", SHIPPED)
def test_config_passes_the_checks(path):
  config_lib.check(load(path, cwd=REPO), num_devices=8)


def test_paper_settings():
  k400, k400_8, ssv2 = (load(spec, cwd=REPO) for spec in ("configs/k400.py", "configs/k400.py:8", "configs/ssv2.py"))
  assert (k400.model.num_frames, k400.model.shift_segment, k400.model.shift_div) == (16, 8, 8)
  assert (k400_8.model.num_frames, k400_8.model.shift_segment) == (8, 8)
  assert (k400.augment.mixup, k400.optimizer.label_smoothing, k400.augment.flip) == (0.4, 0.3, 0.5)
  assert (ssv2.model.shift_segment, ssv2.model.shift_div) == (16, 4)
  assert (ssv2.augment.flip, ssv2.augment.random_erasing) == (0.0, 0.5)
  assert ssv2.eval.temporal_views * ssv2.eval.spatial_crops == 6


# ---------------------------------------------------------------------------------- the schedule in epochs

def schedule(config):
  """(steps_per_epoch, total_steps, warmup_steps, eval_every, checkpoint_every, learning_rate,
  warmup_start_lr) of `config` resolved."""
  c, _ = optim.resolve_schedule(config)
  o = c.optimizer
  return (c.steps_per_epoch, c.total_steps, o.warmup_steps, c.eval_every, c.checkpoint_every, o.learning_rate,
          pytest.approx(o.warmup_start_lr))


def test_the_recipes_at_batch_64_keep_the_official_numbers():
  """Steps per epoch = floor(videos / 64), as the configs had them typed in; the official rates."""
  k400, ssv2, epic = (load(f"configs/{name}.py", cwd=REPO) for name in ("k400", "ssv2", "epic100"))
  assert schedule(k400) == (3750, 30 * 3750, 5 * 3750, 3750, 3750, 0.03, 0.01)
  assert schedule(ssv2) == (2640, 35 * 2640, 5 * 2640, 5 * 2640, 2640, 0.03, 0.003)  # eval every 5 epochs
  assert schedule(epic) == (1046, 50 * 1046, 5 * 1046, 1046, 1046, 0.03, 0.003)


def test_the_schedule_follows_the_batch_with_each_scaling_rule():
  k400 = load("configs/k400.py", cwd=REPO)
  k400.batch_size = 256  # 4x the official batch: 937.5 -> 937 steps per epoch
  assert schedule(k400) == (937, 30 * 937, 5 * 937, 937, 937, pytest.approx(0.12), 0.04)
  k400.optimizer.lr_scaling = "sqrt"
  assert schedule(k400)[5:] == (pytest.approx(0.06), 0.02)
  k400.optimizer.lr_scaling = "none"
  assert schedule(k400)[5:] == (0.03, 0.01)


def test_a_field_set_explicitly_wins_and_is_printed_as_such():
  k400 = load("configs/k400.py", cwd=REPO)
  k400.batch_size, k400.total_steps, k400.optimizer.learning_rate = 1024, 5000, 0.1
  config, lines = optim.resolve_schedule(k400)
  assert (config.total_steps, config.optimizer.learning_rate, config.optimizer.warmup_steps) == (5000, 0.1, 5 * 234)
  assert "  total_steps 5000 (set explicitly)" in lines and "  optimizer.learning_rate 0.1 (set explicitly)" in lines
  assert "  optimizer.warmup_steps 1170 = warmup_epochs 5 x 234" in lines
  assert "  steps_per_epoch 234 = floor(data.train_videos 240000 / batch_size 1024)" in lines
  assert k400.total_steps == 5000 and k400.optimizer.warmup_steps is None  # the config itself is left as it was


def test_configs_without_epochs_and_older_ones_keep_their_own_numbers():
  """The demo and the tests' configs set steps and rates themselves; a config written before the schedule in
  epochs (the one in an older model card) has none of its fields: both check, and nothing is derived."""
  demo, _ = optim.resolve_schedule(load("configs/demo.py", cwd=REPO))
  assert (demo.total_steps, demo.optimizer.learning_rate, demo.optimizer.warmup_steps) == (1500, 0.03, 100)
  old = tiny_config().to_dict()
  for field in ("epochs", "warmup_epochs", "eval_every_epochs", "checkpoint_every_epochs", "steps_per_epoch"):
    del old[field]
  del old["data"]["train_videos"]
  for field in ("base_batch", "base_learning_rate", "base_warmup_start_lr", "lr_scaling"):
    del old["optimizer"][field]
  config_lib.check(ml_collections.ConfigDict(old), num_devices=1)
  assert optim.resolve_schedule(ml_collections.ConfigDict(old))[1] == []


def test_mode_config_prints_the_resolved_config_as_json_without_workdir_data_or_device():
  """JAX_PLATFORMS names no platform: any backend started would fail the command."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="no_such_platform")
  command = [sys.executable, "-m", "xvit_jax.main", "--config=configs/k400.py", "--mode=config",
             "--config.batch_size=1024", "--config.data.data_dir=/no/such/dir"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  printed = json.loads(result.stdout)
  assert printed["steps_per_epoch"] == 240_000 // 1024 == 234
  assert (printed["total_steps"], printed["optimizer"]["warmup_steps"]) == (30 * 234, 5 * 234)
  assert printed["optimizer"]["learning_rate"] == pytest.approx(0.48)  # 0.03 x 1024 / 64
  assert printed["optimizer"]["warmup_start_lr"] == pytest.approx(0.16)  # 0.01 x 1024 / 64
  assert (printed["eval_every"], printed["checkpoint_every"], printed["epochs"]) == (234, 234, 30)
  assert printed["mesh"] == {"data": -1, "fsdp": 1, "frames": 1, "tensor": 1}  # the devices resolve -1 at start
  k400 = load("configs/k400.py", cwd=REPO)
  k400.batch_size, k400.data.data_dir = 1024, "/no/such/dir"
  assert printed == json.loads(json.dumps(optim.resolve_schedule(k400)[0].to_dict()))  # nested as the config
  bad = subprocess.run(command + ["--config.warmup_epochs=30"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=env)
  assert_one_line_exit_2(bad, "error: config.warmup_epochs=30 is not allowed: an integer >= 0 and below epochs=30")


@pytest.mark.parametrize("name", ["k400", "k600", "ssv2", "epic100"])
def test_smoke_presets_are_tiny_and_valid(name):
  c = load(f"configs/{name}.py:smoke", cwd=REPO)
  config_lib.check(c, num_devices=1)
  assert c.model.hidden_size == 32 and c.total_steps == 3 and c.data.name != "synthetic"


# ------------------------------------------------------------------------------ datasets and label heads

def test_label_heads_and_their_logit_columns():
  epic = load("configs/epic100.py", cwd=REPO)
  heads, bounds = label_heads(epic)
  assert heads == [("verb", 97), ("noun", 300)] and list(bounds) == [0, 97, 397]
  heads, bounds = label_heads(tiny_config())
  assert heads == [("label", 3)] and list(bounds) == [0, 3]
  epic.unlock().data.label_heads = "verb:97,noun"
  with pytest.raises(UserError, match=r"config.data.label_heads='verb:97,noun' is not allowed: comma-separated"):
    label_heads(epic)


@pytest.mark.parametrize("name", registry.PREPARED)
def test_the_registry_names_each_builder_with_its_label_fields(name):
  builder = registry.builder(name)
  heads, _ = label_heads(registry.apply_defaults(config_lib.base_config(), name))
  assert builder.name == name
  assert tuple(field for field, _ in heads) == builder.LABEL_FEATURES
  assert getattr(builder, "NUM_CLASSES", registry.DATASETS[name].num_classes) == registry.DATASETS[name].num_classes


@pytest.mark.parametrize("name", labels.DATASETS)
def test_shipped_class_names_match_the_registry(name):
  assert registry.DATASETS[name].label_names
  assert len(labels.names(name)) == registry.DATASETS[name].num_classes


def test_checking_a_config_does_not_import_tensorflow_datasets():
  code = ("import sys; from xvit_jax import config_lib; from xvit_jax.data import registry;"
          "c = registry.apply_defaults(config_lib.base_config(), 'epic_kitchens_100'); config_lib.check(c, 8);"
          "print(sorted(m for m in sys.modules if m.startswith('tensorflow')))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "[]"


def write_snapshot():
  """Rewrites tests/data/config_snapshot.json from the configs as they are now, in its layout (one line a
  field): `PYTHONPATH=. .venv/bin/python tests/test_config.py` after a deliberate change of a config; then
  read its diff."""
  with open(SNAPSHOT) as f:
    specs = list(json.load(f))
  values = {spec: leaves(config_lib.base_config() if spec == "base_config" else load(spec, cwd=REPO)) for spec in specs}
  line = lambda field, value: f"    {json.dumps(field)}: {json.dumps(value)}"
  blocks = [f"  {json.dumps(spec)}: {{\n" + ",\n".join(line(*item) for item in fields.items()) + "\n  }"
            for spec, fields in values.items()]
  with open(SNAPSHOT, "w") as f:
    f.write("{\n" + ",\n".join(blocks) + "\n}\n")


if __name__ == "__main__":
  write_snapshot()
