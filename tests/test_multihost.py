"""Two processes joined by jax.distributed on 127.0.0.1 (gloo collectives on CPU) train exactly as one
process with the same devices: each reads only its rows of every global batch, and a record that cannot
be read shifts no row."""

import importlib.util
import os
import signal
import socket
import time

import jax
import numpy as np
import pytest

from conftest import final_params, grey_video, main_config, prepare, read_metrics, run_main, saved_steps, start_main
from conftest import write_csv

RUN = ["--config.total_steps=6", "--config.log_every=1", "--config.eval_every=3", "--config.checkpoint_every=3"]
KINETICS = ["--config.data.name=kinetics400", "--config.model.num_classes=400", "--config.augment.mixup=0.4",
            "--config.augment.mixup_group=4"]  # 2 processes x 4 rows of the batch of 8: a mixup group each


def kinetics_with_a_bad_record(tmp):
  """A prepared Kinetics-400 layout: 6 train videos, one of them of 2 frames (prepared, unreadable in
  training: it takes 1 row in each epoch), and 1 validation video; the run flags that read it."""
  header, rows = ["label", "youtube_id", "time_start", "time_end", "split"], []
  for i in range(6):
    grey_video(tmp / "manual" / "train" / f"t{i}_000000_000010.mp4", num=2 if i == 3 else 12,
               level=lambda j, i=i: 30 * i + 5 * j + 10)
    rows.append([("abseiling", "zumba")[i % 2], f"t{i}", 0, 10, "train"])
  write_csv(tmp / "manual" / "annotations" / "train.csv", header, rows)
  grey_video(tmp / "manual" / "val" / "v0_000000_000010.mp4")
  write_csv(tmp / "manual" / "annotations" / "validate.csv", header, [["zumba", "v0", 0, 10, "validate"]])
  assert "skipped 0 of 7" in prepare(tmp, "kinetics400")[0]
  return [*KINETICS, f"--config.data.data_dir={tmp / 'data'}"]


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_processes(workdir, *overrides, count=2):
  port = free_port()
  return [start_main(workdir, *overrides, f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}",
                     f"--process_id={i}", collect=False) for i in range(count)]


def finish(processes, timeout=300):
  outputs = [p.communicate(timeout=timeout) for p in processes]
  return [p.returncode for p in processes], outputs


def test_two_processes_train_as_one(tmp_path):
  """On real videos, one of them unreadable, with mixup: the same losses, evaluations and parameters."""
  run = [*RUN, *kinetics_with_a_bad_record(tmp_path)]
  model = main_config(*KINETICS).model
  single = run_main(tmp_path / "one", *run, devices=2)
  assert single.returncode == 0, single.stderr[-2000:]

  codes, outputs = finish(start_processes(tmp_path / "two", *run, "--config.data.workers=-1"))
  assert codes == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  assert "2 device(s) in 2 process(es)" in outputs[0][0]
  assert "shared by 2 JAX process(es) on this host" in outputs[0][0]  # the automatic workers: each its share
  assert "step 6/6" not in outputs[1][0]  # only process 0 prints progress and writes metrics

  one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
  assert [r["step"] for r in two] == [r["step"] for r in one]
  for a, b in zip(one, two):
    np.testing.assert_allclose(b["train/loss"], a["train/loss"], rtol=1e-5)
    assert b["train/bad_records"] == a["train/bad_records"]
    if "eval/top1" in a:
      assert (b["eval/top1"], b["eval/videos"]) == (a["eval/top1"], a["eval/videos"])
  assert sum(r["train/bad_records"] for r in two) == 8  # 48 rows: 8 epochs of the 6 records, the bad one in each
  for a, b in zip(jax.tree.leaves(final_params(tmp_path / "one", model)),
                  jax.tree.leaves(final_params(tmp_path / "two", model))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)

  # both processes saved their data position; a restart resumes each from its own
  data_files = os.listdir(tmp_path / "two" / "checkpoints" / "6" / "data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_files)
  more = [arg.replace("total_steps=6", "total_steps=9") for arg in run]
  assert run_main(tmp_path / "one", *more, devices=2).returncode == 0
  codes, outputs = finish(start_processes(tmp_path / "two", *more))
  assert codes == [0, 0], outputs[0][1][-2000:]
  assert "data stream at the saved position" in outputs[0][0]
  for a, b in zip(jax.tree.leaves(final_params(tmp_path / "one", model)),
                  jax.tree.leaves(final_params(tmp_path / "two", model))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # 20 s; the slow tests' README command runs it
def test_sigterm_on_one_host_stops_both_at_the_same_saved_step(tmp_path):
  processes = start_processes(tmp_path, "--config.total_steps=400", "--config.log_every=1", "--config.eval_every=0",
                              "--config.checkpoint_every=0")
  deadline = time.time() + 240
  while not ((tmp_path / "metrics.jsonl").is_file() and len(read_metrics(tmp_path)) >= 3):
    assert all(p.poll() is None for p in processes) and time.time() < deadline
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)  # the notice reaches one host; the sync service tells the other
  codes, outputs = finish(processes)
  assert codes == [143, 143], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  stopped = int(outputs[0][0].split("preempted at step ")[1].split(":")[0])
  assert saved_steps(tmp_path) == [stopped] and stopped < 400


def test_incomplete_or_inconsistent_multihost_flags_are_one_line_errors(tmp_path):
  missing = run_main(tmp_path, "--coordinator_address=127.0.0.1:1234")
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1] == (
      "error: --coordinator_address=127.0.0.1:1234 also needs --num_processes and --process_id "
      "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
  wrong = run_main(tmp_path, "--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2")
  assert wrong.returncode == 2
  assert wrong.stderr.strip().splitlines()[-1] == (
      "error: --process_id=2 is not allowed: an index in 0..1 for --num_processes=2")
  assert not (tmp_path / "checkpoints").exists()


def test_schedulers_are_recognised_by_their_variables(monkeypatch):
  from xvit_jax import distributed  # pylint: disable=import-outside-toplevel
  for name in ("SLURM_NTASKS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(name, raising=False)
  assert distributed._detected_cluster() is None  # pylint: disable=protected-access
  monkeypatch.setenv("SLURM_NTASKS", "1")
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  assert distributed._detected_cluster() is None  # one task: nothing to join  # pylint: disable=protected-access
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert distributed._detected_cluster() == "SLURM"  # pylint: disable=protected-access
  monkeypatch.delenv("SLURM_NTASKS")
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
  assert distributed._detected_cluster() == "Open MPI"  # pylint: disable=protected-access


def test_a_cloud_tpu_vm_is_recognised_by_its_tpu_chips_and_libtpu(monkeypatch, tmp_path):
  from xvit_jax import distributed  # pylint: disable=import-outside-toplevel
  for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS", "JAX_FORCE_TPU_INIT"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, "PCI_DEVICES", str(tmp_path))
  for address, vendor, device in (("0000:00:04.0", "0x1ae0", "0x0042"),  # Google's network card (gVNIC)
                                  ("0000:00:05.0", "0x10de", "0x2330")):  # an NVIDIA GPU
    (tmp_path / address).mkdir()
    (tmp_path / address / "vendor").write_text(vendor + "\n")
    (tmp_path / address / "device").write_text(device + "\n")
  libtpu = tmp_path / "libtpu.so"
  libtpu.write_bytes(b"")
  monkeypatch.setenv("TPU_LIBRARY_PATH", str(libtpu))
  assert distributed._detected_cluster() is None  # pylint: disable=protected-access
  (tmp_path / "0000:00:06.0").mkdir()  # a TPU v5e chip
  (tmp_path / "0000:00:06.0" / "vendor").write_text("0x1ae0\n")
  (tmp_path / "0000:00:06.0" / "device").write_text("0x0063\n")
  assert distributed._detected_cluster() == "Cloud TPU"  # pylint: disable=protected-access
  monkeypatch.setenv("TPU_LIBRARY_PATH", str(tmp_path / "missing.so"))  # chips, but no libtpu (if none is installed)
  assert distributed._on_cloud_tpu_vm() == (importlib.util.find_spec("libtpu") is not None)  # pylint: disable=protected-access
