"""Preemption and resume as they happen: a run killed with SIGKILL at any moment, or stopped with
SIGTERM, and restarted with the same command ends bitwise where an uninterrupted run ends, having seen
the same data; checkpoints keep the newest N and the best; an unfinished checkpoint is never used."""

import json
import os
import re
import shutil
import signal

import jax
import numpy as np

import pytest

from conftest import final_params, read_metrics, run_main, saved_steps, start_main, train_main, wait_for
from xvit_jax import checkpoints

RUN = ["--config.total_steps=24", "--config.checkpoint_every=3", "--config.log_every=1", "--config.eval_every=15",
       "--config.checkpoint_keep=2", "--config.data.eval_size=400"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run, as a process like the runs it is compared with bitwise: its final parameters and
  its {step: train loss}."""
  workdir = tmp_path_factory.mktemp("reference")
  result = run_main(workdir, *RUN)
  assert result.returncode == 0, result.stderr[-2000:]
  return final_params(workdir), train_losses(workdir)


def train_losses(workdir):
  """{step: train loss} as the last run wrote it (a resumed run rewrites the steps after its checkpoint)."""
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.array_equal(x, y), "parameters differ from the uninterrupted run's"


def test_sigkill_at_any_moment_then_resume_is_bitwise_the_uninterrupted_run(tmp_path, reference):
  expected_params, expected_losses = reference

  work = tmp_path / "killed"
  # first kill: the moment the first checkpoint's directory appears (its write, or the next one's, in flight)
  run = start_main(work, *RUN)
  wait_for(lambda: (work / "checkpoints").is_dir() and os.listdir(work / "checkpoints"), run)
  run.kill()
  run.wait()
  # second kill: once step 12 is safely saved, mid-training
  run = start_main(work, *RUN)
  wait_for(lambda: any(step >= 12 for step in saved_steps(work)), run)
  run.kill()
  run.wait()
  # third kill: during the evaluation at step 15 (its progress line is out, its eval line is not)
  run = start_main(work, *RUN)
  wait_for(lambda: any(line.startswith("step 15/24") for line in run.lines), run)
  run.kill()
  run.wait()
  assert not any(line.startswith("eval at step 15") for line in run.lines), "killed after the evaluation"
  assert saved_steps(work)[-1] < 24, "killed too late to test anything"

  resumed = run_main(work, *RUN)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from" in resumed.stdout and "data stream at the saved position" in resumed.stdout
  assert_same_params(final_params(work), expected_params)
  assert train_losses(work) == expected_losses  # the same batches, step by step


def test_sigterm_saves_exits_143_and_the_same_command_resumes(tmp_path, reference):

  work = tmp_path / "preempted"
  run = start_main(work, *RUN)
  wait_for(lambda: (work / "metrics.jsonl").is_file() and len(read_metrics(work)) >= 5, run)
  run.send_signal(signal.SIGTERM)
  run.wait(timeout=120)
  run.reader.join(timeout=10)
  stdout = "".join(run.lines)
  assert run.returncode == 143
  stopped = int(stdout.split("preempted at step ")[1].split(":")[0])
  assert 5 <= stopped < 24 and stopped in saved_steps(work)
  assert "run the same command to resume" in stdout

  resumed = run_main(work, *RUN)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"steps {stopped}..24" in resumed.stdout
  assert_same_params(final_params(work), reference[0])


def test_keeps_the_newest_and_the_best_and_ignores_an_unfinished_checkpoint(tmp_path):
  first, _ = train_main(tmp_path, "--config.total_steps=8", "--config.checkpoint_every=2", "--config.eval_every=2",
                        "--config.checkpoint_keep=2", "--config.optimizer.learning_rate=0.3")
  top1 = {r["step"]: r["eval/top1"] for r in read_metrics(tmp_path) if "eval/top1" in r}
  best = max(sorted(top1), key=lambda step: top1[step])  # the earliest of the best
  best = max(step for step in top1 if top1[step] == top1[best])  # ties: the newest of them is kept
  assert saved_steps(tmp_path) == sorted({6, 8, best})
  assert f"best eval/top1 {top1[best]:.4f} at step {best}" in first

  # a half-written step (what a kill during a write leaves: orbax's temporary directory) is not picked up
  partial = tmp_path / "checkpoints" / "10.orbax-checkpoint-tmp-1"
  shutil.copytree(tmp_path / "checkpoints" / "8", partial)
  os.remove(partial / "_CHECKPOINT_METADATA")
  mngr = checkpoints.manager(str(tmp_path), create=False)
  assert mngr.latest_step() == 8
  mngr.close()
  resumed, _ = train_main(tmp_path, "--config.total_steps=10", "--config.checkpoint_every=2", "--config.eval_every=2",
                          "--config.checkpoint_keep=2", "--config.optimizer.learning_rate=0.3")
  assert "steps 8..10" in resumed
  assert 10 in saved_steps(tmp_path)


def test_a_mixup_runs_data_position_counted_in_rows_by_the_older_pipeline_is_reseeded_in_one_line(tmp_path):
  """Before mixup groups, a mixup run's saved position counted rows (8 a step here); today's stream is of
  groups of 4 rows (2 a step). Read as groups, the old position would skip 3 of every 4 batches unsaid."""
  mixup = ["--config.augment.mixup=0.4", "--config.augment.mixup_group=4", "--config.checkpoint_every=2",
           "--config.eval_every=0"]
  train_main(tmp_path, "--config.total_steps=2", *mixup)
  state_file = tmp_path / "checkpoints" / "2" / "data" / "process_0-of-1.json"
  assert json.loads(state_file.read_text())["next_index"] == 4  # 2 steps x 2 groups: today's count
  same, _ = train_main(tmp_path, "--config.total_steps=3", *mixup)
  assert "resumed from" in same and "(data stream at the saved position)" in same

  shutil.rmtree(tmp_path / "checkpoints" / "3")
  state_file.write_text(json.dumps(dict(json.loads(state_file.read_text()), next_index=16)))  # 2 steps x 8 rows
  older, _ = train_main(tmp_path, "--config.total_steps=3", *mixup)
  assert ("data position saved before mixup mixed groups of augment.mixup_group clips (it counted rows): "
          "order reseeded at step 2") in older


def test_a_checkpoint_saved_while_the_next_batch_is_on_the_devices_resumes_with_that_batch(tmp_path, monkeypatch):
  """The loop places batch k+1 while step k runs (prefetch.py). Saved at step 2 with batch 3 made and placed
  (held for it here), the checkpoint's data position is the 2 batches the steps took (16 rows), and the run
  resumed from it ends bitwise where the uninterrupted run ends, with the same losses."""
  from xvit_jax import prefetch  # pylint: disable=import-outside-toplevel
  taken_position = prefetch.DevicePrefetch.get_state

  def once_the_next_batch_is_made(self):
    wait_for(lambda: self.ready.qsize() > 0, run)
    return taken_position(self)

  class run:  # wait_for's process: running until the test ends
    poll = staticmethod(lambda: None)

  monkeypatch.setattr(prefetch.DevicePrefetch, "get_state", once_the_next_batch_is_made)
  steps = ["--config.total_steps=4", "--config.checkpoint_every=2", "--config.eval_every=0", "--config.log_every=1",
           "--config.checkpoint_keep=3"]
  train_main(tmp_path / "whole", *steps)
  state_file = tmp_path / "whole" / "checkpoints" / "2" / "data" / "process_0-of-1.json"
  assert json.loads(state_file.read_text())["next_index"] == 2 * 8
  shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
  resumed, _ = train_main(tmp_path / "resumed", *steps)
  assert "resumed from" in resumed and "(data stream at the saved position)" in resumed and "steps 2..4" in resumed
  assert_same_params(final_params(tmp_path / "resumed"), final_params(tmp_path / "whole"))
  assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "whole")


def test_a_checkpoint_of_the_older_qkv_layout_resumes_as_todays(tmp_path):
  """Checkpoints written before the head-aligned qkv kernel hold it as (C, 3C), its bias as (3C,) and their Adam
  moments likewise: the same numbers in the same order. Such a checkpoint (rewritten here from today's with
  those shapes) restores reshaped, and training from it ends bitwise where training from today's ends."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from xvit_jax import trees  # pylint: disable=import-outside-toplevel
  run = ["--config.checkpoint_every=2", "--config.eval_every=0"]
  new, old = tmp_path / "new", tmp_path / "old"
  train_main(new, "--config.total_steps=2", *run)

  mngr = checkpoints.manager(str(new), create=False)
  items = mngr.restore(2, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                                  train=ocp.args.StandardRestore()))
  mngr.close()
  flat = lambda shape: (shape[0], int(np.prod(shape[1:]))) if len(shape) == 4 else (int(np.prod(shape)),)
  is_qkv = lambda path: re.search(r"qkv/(kernel|bias)(/value)?$", trees.path_name(path))  # optimizer: {"value": x}
  older = lambda path, x: np.asarray(x).reshape(flat(x.shape)) if is_qkv(path) else x
  legacy = {name: jax.tree_util.tree_map_with_path(older, items[name]) for name in ("params", "train")}
  shapes = {name: leaf.shape for name, leaf in trees.flatten(legacy["train"]).items()}
  assert shapes["opt_state/2/0/trace/blocks/0/attn/qkv/kernel/value"] == (32, 96)  # the moments too, as then
  mngr = checkpoints.manager(str(old))
  checkpoints.save(mngr, 2, legacy["params"], legacy["train"])
  checkpoints.wait(mngr)
  mngr.close()
  shutil.copytree(new / "checkpoints" / "2" / "data", old / "checkpoints" / "2" / "data")

  for workdir in (new, old):
    out, _ = train_main(workdir, "--config.total_steps=4", *run)
    assert "resumed from" in out
  assert_same_params(final_params(new), final_params(old))
  mngr = checkpoints.manager(str(old), create=False)
  qkv = checkpoints.restore_params(mngr, 2, final_params(new))["blocks"][0]["attn"]["qkv"]["kernel"]
  assert qkv.shape == (32, 3, 4, 8)
  mngr.close()  # read with a template of numpy arrays (predict, export, pretrained's loader)


# 4 host devices, mesh fsdp=2 x tensor=2: checkpoints `argv[1]` steps 2 and 4 restored into the state of the demo
# model stored block by block and stacked (model.scan_layers); prints, per layout, whether every leaf kept its
# template's sharding and how many of them are sharded, and whether the two agree piece by piece
RESTORED_BOTH_WAYS = """
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from conftest import main_config
from xvit_jax import checkpoints, layouts, optim, sharding, state
out = {}
for step in (2, 4):
  flat = {}
  for scan in (False, True):
    c = main_config(f"--config.model.scan_layers={scan}", "--config.mesh.data=1", "--config.mesh.fsdp=2",
                    "--config.mesh.tensor=2")
    tx, _ = optim.make_optimizer(c.optimizer, c.total_steps)
    _, s, shardings = state.create(c, tx, sharding.make_mesh(c.mesh))
    mngr = checkpoints.manager(sys.argv[1], create=False)
    assert state.restore(s, mngr, step)
    mngr.close()
    kept = jax.tree.leaves(jax.tree.map(lambda x, w: x.sharding == w, s, shardings))
    sharded = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(s))
    out[f"{step}/{scan}"] = [all(kept), sharded]
    leaves = jax.tree_util.tree_flatten_with_path(s)[0]
    flat[scan] = {checkpoints._stored_name(p): np.asarray(x) for p, x in leaves}
  pieces = layouts.pieces({name: x.shape for name, x in flat[True].items()})
  out[f"{step}/same"] = sorted(pieces) == sorted(flat[False]) and all(
      np.array_equal(flat[True][name] if j is None else flat[True][name][j], flat[False][piece])
      for piece, (name, j, _) in pieces.items())
print(json.dumps(out))
"""


def test_a_checkpoint_restores_into_either_block_layout(tmp_path):
  """model.scan_layers stores each run of alike blocks stacked (`stacks/k`), without it the model stores them block
  by block (`blocks/i`): a checkpoint written in either layout restores into the other, on a mesh that shards
  them, with the same numbers in every parameter and optimizer moment (layouts.py). A run resumed with its
  layers switched to scanned trains on as it would have unscanned (within float32 rounding: scanning reorders
  sums), and its stacked checkpoint reads back block by block."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from conftest import REPO, cpu_env  # pylint: disable=import-outside-toplevel
  run = ["--config.checkpoint_every=2", "--config.eval_every=0"]
  switched, kept = tmp_path / "switched", tmp_path / "kept"
  train_main(switched, "--config.total_steps=2", *run)
  shutil.copytree(switched, kept)
  out, _ = train_main(switched, "--config.total_steps=4", "--config.model.scan_layers=True", *run)
  assert "resumed from" in out
  train_main(kept, "--config.total_steps=4", *run)
  for a, b in zip(jax.tree.leaves(final_params(switched)), jax.tree.leaves(final_params(kept))):
    np.testing.assert_allclose(a, b, atol=1e-6)

  result = subprocess.run([sys.executable, "-c", RESTORED_BOTH_WAYS, str(switched)], cwd=REPO, env=cpu_env(4),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  restored = json.loads(result.stdout.splitlines()[-1])
  for step in (2, 4):  # step 2 written block by block, step 4 stacked
    assert restored[f"{step}/same"], step
    for scan in ("False", "True"):
      kept_placement, sharded = restored[f"{step}/{scan}"]
      assert kept_placement and sharded > 10, (step, scan, sharded)
