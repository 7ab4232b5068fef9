"""tools.export: a self-contained jax.export artifact and its model card, run where xvit_jax is not."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import demo_config, export_tool, make_checkpoint, run_module
from xvit_jax import predict
from xvit_jax.errors import UserError

# what a deployment needs: jax, numpy and the two files; it must not be able to import xvit_jax
LOADER = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    try:
      import xvit_jax
      sys.exit("xvit_jax is importable here")
    except ImportError:
      pass
    artifact, batch, out = sys.argv[1:]
    with open(artifact + ".json") as f:
      card = json.load(f)
    with open(artifact, "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    clips = np.load(batch)
    assert list(clips.shape[1:]) == card["artifact"]["input"]["shape"][1:]
    logits = np.asarray(exported.call(clips))
    single = np.asarray(exported.call(clips[:1]))
    np.save(out, logits)
    print(json.dumps({"input": str(exported.in_avals[0]), "output": str(exported.out_avals[0]),
                      "single_vs_batch": float(np.abs(single[0] - logits[0]).max()),
                      "top1": [card["labels"][i] for i in logits.argmax(-1)]}))
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A checkpoint at step 7 with eval metrics, exported with float32 weights: (root, stdout)."""
  root = tmp_path_factory.mktemp("export")
  make_checkpoint(root / "run", demo_config(), step=7, metrics={"eval/top1": 0.5})
  lines = [{"step": 5, "eval/top1": 0.25}, {"step": 7, "train/loss": 0.9, "eval/top1": 0.5, "eval/top5": 1.0}]
  (root / "run" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  result = export_tool(f"--checkpoint={root / 'run'}", f"--output={root / 'model.jaxexport'}", "--check-clips=2")
  assert result.returncode == 0, result.stderr[-2000:]
  return root, result.stdout


def test_the_artifact_runs_without_xvit_jax_and_gives_predicts_logits(exported, tmp_path):
  root, stdout = exported
  artifact = root / "model.jaxexport"
  assert f"exported step 7 of {root / 'run'} to {artifact}" in stdout
  assert "check on 2 synthetic clips against the float32 model: top-1 agreement 100.0%" in stdout
  card = json.loads((root / "model.jaxexport.json").read_text())
  assert card["format"] == "xvit_jax.export/1"
  assert card["artifact"]["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
  assert card["artifact"]["bytes"] == artifact.stat().st_size
  assert card["artifact"]["input"] == {"shape": ["b", 4, 32, 32, 3], "dtype": "float32"}
  assert card["artifact"]["output"] == {"shape": ["b", 4], "dtype": "float32", "values": "logits", "heads": [["label", 4]]}
  assert card["artifact"]["weights_dtype"] == "float32" and card["artifact"]["platforms"] == ["cpu"]
  assert card["source"] == {"checkpoint": str(root / "run"), "step": 7, "metrics": {"eval/top1": 0.5, "eval/top5": 1.0}}
  assert card["labels"] == ["class 0", "class 1", "class 2", "class 3"]
  pre = card["preprocessing"]
  assert (pre["frames"], pre["size"], pre["mean"], pre["std"]) == (4, 32, [0.5] * 3, [0.5] * 3)
  assert (pre["sampling"], pre["stride"], pre["temporal_views"], pre["spatial_crops"]) == ("dense", 10, 1, 3)
  assert card["config"]["model"]["num_layers"] == 2 and card["config"]["model"]["hidden_size"] == 64
  assert card["check"]["clips"] == 2 and card["check"]["max_abs_diff"] <= 1e-5

  batch = np.random.default_rng(5).uniform(-1, 1, (3, 4, 32, 32, 3)).astype(np.float32)  # 3: not 2, not 1
  np.save(tmp_path / "batch.npy", batch)
  (tmp_path / "loader.py").write_text(LOADER)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "loader.py", str(artifact), "batch.npy", "logits.npy"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["input"] == "float32[b,4,32,32,3]" and report["output"] == "float32[b,4]"
  theirs = np.load(tmp_path / "logits.npy")
  ours = predict.load(demo_config(), str(root / "run"))(batch)
  assert theirs.shape == (3, 4)
  assert np.abs(theirs - ours).max() <= 1e-5 * np.abs(ours).max()
  assert report["single_vs_batch"] <= 1e-5 * np.abs(ours).max()
  assert report["top1"] == [f"class {i}" for i in ours.argmax(-1)]
  fresh = predict.load(demo_config(), None)(batch)  # not the checkpoint's weights: the comparison can fail
  assert np.abs(theirs - fresh).max() > 1e-2 * np.abs(ours).max()


def test_predict_runs_the_artifact_with_the_cards_config(exported, tmp_path):
  root, _ = exported
  batch = np.random.default_rng(6).uniform(-1, 1, (2, 4, 32, 32, 3)).astype(np.float32)
  np.save(tmp_path / "batch.npy", batch)
  result = run_module("xvit_jax.predict", f"--artifact={root / 'model.jaxexport'}", f"--video={tmp_path / 'batch.npy'}",
                      f"--logits-out={tmp_path / 'out.npy'}", "--top-k=2")
  assert result.returncode == 0, result.stderr[-2000:]
  ours = predict.load(demo_config(), str(root / "run"))(batch)
  np.testing.assert_allclose(np.load(tmp_path / "out.npy"), ours, rtol=1e-5, atol=1e-5 * np.abs(ours).max())
  assert result.stdout.splitlines()[0].endswith("batch.npy [clip 0]") and len(result.stdout.splitlines()) == 6


def test_bfloat16_weights_halve_the_artifact_and_keep_top1(exported):
  root, _ = exported
  bf16 = root / "model_bf16.jaxexport"
  result = export_tool(f"--checkpoint={root / 'run'}", f"--output={bf16}", "--weights-dtype=bfloat16")
  assert result.returncode == 0, result.stderr[-2000:]
  float32_bytes = (root / "model.jaxexport").stat().st_size
  card = json.loads((root / "model_bf16.jaxexport.json").read_text())
  assert card["artifact"]["weights_dtype"] == "bfloat16" and card["artifact"]["bytes"] == bf16.stat().st_size
  assert card["artifact"]["float32_bytes"] == float32_bytes
  assert 0.45 < bf16.stat().st_size / float32_bytes < 0.55, (bf16.stat().st_size, float32_bytes)
  check = card["check"]
  assert check["clips"] == 8 and check["top1_agreement"] == 1.0
  assert 0 < check["relative_diff"] < 0.05  # rounded weights: the logits move, a little
  size_line = next(line for line in result.stdout.splitlines() if line.startswith("size: "))
  assert "with bfloat16 weights" in size_line and f"{float32_bytes / 1e6:.2f} MB with float32" in size_line
  assert "top-1 agreement 100.0%" in result.stdout


def test_export_errors_are_one_line(exported, tmp_path):
  root, _ = exported
  make_checkpoint(tmp_path / "wide", demo_config("--config.model.hidden_size=128"))
  cases = [
      ([f"--checkpoint={tmp_path / 'nothing'}"], f"error: no checkpoint in {tmp_path / 'nothing' / 'checkpoints'}"),
      ([f"--checkpoint={tmp_path / 'wide'}"], "is from another model config: parameter"),
      ([f"--checkpoint={root / 'run'}", f"--saved-model={tmp_path / 'tf'}"], "--saved-model needs TensorFlow"),
      ([f"--checkpoint={root / 'run'}", "--platforms=cpu,gpu"], "unknown platform(s) gpu"),
  ]
  for args, message in cases:
    result = export_tool(*args, f"--output={tmp_path / 'out.jaxexport'}")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("error: ") and message in last, (args, result.stderr[-1000:])
    assert not (tmp_path / "out.jaxexport").exists() and not (tmp_path / "tf").exists()


def test_a_mismatched_artifact_or_card_is_one_line(exported, tmp_path):
  root, _ = exported
  shutil.copy(root / "model.jaxexport", tmp_path / "a.jaxexport")
  card = json.loads((root / "model.jaxexport.json").read_text())
  card["artifact"]["sha256"] = hashlib.sha256(b"another artifact").hexdigest()
  (tmp_path / "a.jaxexport.json").write_text(json.dumps(card))
  shutil.copy(root / "model.jaxexport", tmp_path / "lonely.jaxexport")
  np.save(tmp_path / "batch.npy", np.zeros((1, 4, 32, 32, 3), np.float32))
  cases = [
      ([f"--artifact={tmp_path / 'a.jaxexport'}"], "does not match"),
      ([f"--artifact={tmp_path / 'lonely.jaxexport'}"], "no model card"),
      ([f"--artifact={root / 'model.jaxexport'}", "--config=configs/demo.py"],
       "is from another model: it takes clips (b, 4, 32, 32, 3) and gives 4 classes; the config describes clips "
       "(b, 8, 32, 32, 3) and 4 classes"),
      ([f"--artifact={root / 'model.jaxexport'}", f"--checkpoint={root / 'run'}"], "give either --checkpoint"),
  ]
  for args, message in cases:
    result = run_module("xvit_jax.predict", *args, f"--video={tmp_path / 'batch.npy'}")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("error: ") and message in last, (args, result.stderr[-1000:])


def test_a_card_is_data_checked_like_a_config(exported, tmp_path):
  """A card travels with its artifact from elsewhere: its labels and config are checked before use."""
  root, _ = exported
  card = json.loads((root / "model.jaxexport.json").read_text())
  cases = [("labels", {"0": "a"}, "'labels' must be a list of class names"),
           ("labels", ["a", "b"], "names 2 classes for a model of 4"),
           ("config", {**card["config"], "model": {**card["config"]["model"], "attention": "os.system"}},
            "config.model.attention='os.system' is not allowed"),
           ("config", {**card["config"], "model": {**card["config"]["model"], "num_frames": "many"}},
            "config.model.num_frames='many' is not allowed")]
  for i, (field, value, message) in enumerate(cases):
    shutil.copy(root / "model.jaxexport", tmp_path / f"{i}.jaxexport")
    (tmp_path / f"{i}.jaxexport.json").write_text(json.dumps({**card, field: value}))
    with pytest.raises(UserError, match=r"^model card .*" + re.escape(message)):
      predict.load_artifact(str(tmp_path / f"{i}.jaxexport"))
