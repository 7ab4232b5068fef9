#!/usr/bin/env bash
# Train xvit_jax on a GKE cluster with XPK (https://github.com/AI-Hypercomputer/xpk): a JobSet with one pod
# per TPU host (or per GPU node), all running the same command. See launch/README.md.
#
# Prerequisites, on the machine you run this from:
#   - gcloud (logged in), kubectl, docker, and xpk (pip install xpk); docker allowed to push to your
#     project's registry (gcloud auth configure-docker)
#   - a GKE cluster made with xpk (xpk cluster create --cluster=CLUSTER --tpu-type=v5litepod-16 ...,
#     or --device-type=h100-80gb-8 for GPUs)
#   - a bucket: the workdir goes straight to it (WORKDIR=gs://BUCKET/xvit/WORKLOAD: orbax writes checkpoints
#     to Cloud Storage itself, no mount), and the data prepared with python -m xvit_jax.data.prepare is
#     read from it through xpk storage mounted read-only in every pod at MOUNT_DIR (--size is required):
#       xpk storage attach xvit-gcs --cluster=CLUSTER --type=gcsfuse --bucket=BUCKET --size=64 \
#         --mount-point=/gcs --readonly=true --auto-mount=false
#   - this repository as a git checkout (its tracked and untracked, not ignored files go into the image)
#
# Usage: launch/gke_xpk.sh COMMAND
#   image    build the base image (launch/Dockerfile: Python 3.12, the requirements, jax[tpu] or
#            jax[cuda12]) and push it to BASE_IMAGE; again only when requirements.txt changes
#   create   xpk workload create: xpk adds this repository to the base image as a new layer, pushes
#            that to gcr.io/PROJECT and starts the JobSet
#   list     xpk workload list
#   delete   xpk workload delete (then create again, with the same WORKDIR, to resume)
#
# Settings (environment, defaults in brackets):
#   CLUSTER [required]  WORKLOAD [xvit]  PROJECT, ZONE [gcloud's defaults]
#   ACCELERATOR [v5litepod-16]   a TPU type (vN...: one pod per TPU host) or an xpk GPU device type
#                                such as h100-80gb-8 (one pod per node, driving its 8 GPUs)
#   NUM_SLICES [1] (TPU)  NUM_NODES [1] (GPU)
#   STORAGE [none]  MOUNT_DIR [/gcs]   the xpk storage to mount and where it is mounted
#   BUCKET [none]  the Cloud Storage bucket of the workdir
#   CONFIG [configs/k400.py]  WORKDIR [gs://$BUCKET/xvit/$WORKLOAD; without BUCKET $MOUNT_DIR/xvit/$WORKLOAD,
#                             which then needs a writable mount with --rename-dir-limit]
#   DATA_DIR [$MOUNT_DIR/tfds, "" for none]
#   EXTRA_FLAGS [none]           more flags for python -m xvit_jax.main (e.g. --config.dtype=bfloat16)
#   MAX_RESTARTS [10]            JobSet restarts after a failure or preemption; each restart resumes
#   GRACE_SECONDS [120]          time a pod has after SIGTERM to save its checkpoint
#   BASE_IMAGE [gcr.io/$PROJECT/xvit-jax-tpu:latest, or xvit-jax-cuda12 for GPUs]   a registry path: xpk
#                                reads it from the registry, not from the local docker
#   STAGE_DIR [${TMPDIR:-/tmp}/xvit_jax_xpk]   where the copy of the repository for the image is made
#   DRY_RUN=1                    print the commands instead of running them
set -euo pipefail
# (${array[@]+"${array[@]}"} below: an empty array under set -u in the bash 3.2 of macOS)

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${CLUSTER:-}
WORKLOAD=${WORKLOAD:-xvit}
PROJECT=${PROJECT:-}
ZONE=${ZONE:-}
ACCELERATOR=${ACCELERATOR:-v5litepod-16}
case "$ACCELERATOR" in
  v[0-9]* | tpu[0-9]*) KIND=tpu; JAX_EXTRA=tpu ;;  # v5litepod-16, v6e-256, tpu7x-128
  *) KIND=gpu; JAX_EXTRA=cuda12 ;;
esac
NUM_SLICES=${NUM_SLICES:-1}
NUM_NODES=${NUM_NODES:-1}
STORAGE=${STORAGE:-}
MOUNT_DIR=${MOUNT_DIR:-/gcs}
CONFIG=${CONFIG:-configs/k400.py}
BUCKET=${BUCKET:-}
if [ -n "$BUCKET" ]; then WORKDIR=${WORKDIR:-gs://$BUCKET/xvit/$WORKLOAD}
else WORKDIR=${WORKDIR:-$MOUNT_DIR/xvit/$WORKLOAD}; fi
DATA_DIR=${DATA_DIR-$MOUNT_DIR/tfds}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
MAX_RESTARTS=${MAX_RESTARTS:-10}
GRACE_SECONDS=${GRACE_SECONDS:-120}
BASE_IMAGE=${BASE_IMAGE:-}
STAGE_DIR=${STAGE_DIR:-${TMPDIR:-/tmp}/xvit_jax_xpk}
DRY_RUN=${DRY_RUN:-0}

die() { echo "gke_xpk.sh: $*" >&2; exit 2; }

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # show, run (DRY_RUN=1 prints)

base_image() {
  if [ -z "$BASE_IMAGE" ]; then
    [ -n "$PROJECT" ] || die "set PROJECT (or BASE_IMAGE) for the image's registry path"
    BASE_IMAGE="gcr.io/$PROJECT/xvit-jax-$JAX_EXTRA:latest"
  fi
}

xpk_flags() {
  [ -n "$CLUSTER" ] || die "set CLUSTER to the name of your GKE cluster"
  XPK_FLAGS=(--cluster="$CLUSTER")
  if [ -n "$PROJECT" ]; then XPK_FLAGS+=(--project="$PROJECT"); fi
  if [ -n "$ZONE" ]; then XPK_FLAGS+=(--zone="$ZONE"); fi
}

# The command every pod runs, in /app (the repository) of the image.
train_command() {
  local args=(python -m xvit_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
  if [ -n "$DATA_DIR" ]; then args+=("--config.data.data_dir=$DATA_DIR"); fi
  local extra=()
  read -r -a extra <<< "$EXTRA_FLAGS"
  args+=(${extra[@]+"${extra[@]}"})
  for arg in "${args[@]}"; do
    # xpk writes the command into the JobSet's YAML (inside double quotes for GPUs): keep it plain
    [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]] || die "'$arg': the command may only hold letters, digits and _@%+=:,./-"
  done
  if [ "$KIND" = gpu ]; then
    # xpk gives GPU pods JAX_COORDINATOR_ADDRESS (pod 0's host name), JAX_COORDINATOR_PORT, NNODES and
    # NODE_RANK; the trainer reads JAX_COORDINATOR_ADDRESS=HOST:PORT, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    # ${...} is expanded in the pod; Kubernetes itself expands only $(...).
    # shellcheck disable=SC2016
    printf '%s' 'export JAX_COORDINATOR_ADDRESS=${JAX_COORDINATOR_ADDRESS}:${JAX_COORDINATOR_PORT}' \
      ' JAX_NUM_PROCESSES=${NNODES} JAX_PROCESS_ID=${NODE_RANK} && '
  fi
  # TPU pods: the trainer calls jax.distributed.initialize(), which finds the slice's hosts by itself
  echo "${args[*]}"
}

image() {
  base_image
  # the build context is only requirements.txt and the Dockerfile (not .venv, data or workdirs)
  # shellcheck disable=SC2016  # $1.. are bash -c's arguments
  local build='tar -C "$1" -c requirements.txt launch/Dockerfile'
  # linux/amd64 whatever this machine is (on Apple silicon plain docker build makes an arm64 image, on which
  # xpk's own linux/amd64 layer would then be built)
  # shellcheck disable=SC2016
  build+=' | docker build --platform=linux/amd64 -f launch/Dockerfile --build-arg JAX_EXTRA="$2" -t "$3" -'
  run bash -c "$build" build "$REPO_ROOT" "$JAX_EXTRA" "$BASE_IMAGE"
  run docker push "$BASE_IMAGE"
}

create() {
  xpk_flags
  base_image
  if [ -z "$STORAGE" ]; then
    case "$WORKDIR" in
      "$MOUNT_DIR"/*) die "WORKDIR=$WORKDIR is under MOUNT_DIR but no STORAGE is set: set STORAGE" \
                          "(xpk storage attach), or WORKDIR and DATA_DIR to a filesystem every pod sees" ;;
    esac
  fi
  git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1 || die "$REPO_ROOT is not a git checkout"
  local command
  command=$(train_command)
  # xpk adds --script-dir to BASE_IMAGE as a layer in /app: give it the files git knows about
  # shellcheck disable=SC2016  # $1 and $2 are bash -c's arguments
  local stage='rm -rf "$2" && mkdir -p "$2" && cd "$1"'
  # shellcheck disable=SC2016
  stage+=' && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$2" -xf -'
  run bash -c "$stage" stage "$REPO_ROOT" "$STAGE_DIR"
  local accelerator=()
  if [ "$KIND" = tpu ]; then
    accelerator=(--tpu-type="$ACCELERATOR" --num-slices="$NUM_SLICES")
  else
    accelerator=(--device-type="$ACCELERATOR" --num-nodes="$NUM_NODES")
  fi
  local storage=()
  if [ -n "$STORAGE" ]; then storage=(--storage="$STORAGE"); fi
  # The pod's SIGTERM (preemption, maintenance, delete) reaches the trainer, which saves a checkpoint
  # and exits with 143; xpk restarts the JobSet on exit codes 42 and 127-255, up to --max-restarts.
  run xpk workload create "${XPK_FLAGS[@]}" --workload="$WORKLOAD" "${accelerator[@]}" \
    --base-docker-image="$BASE_IMAGE" --script-dir="$STAGE_DIR" --command="$command" \
    --max-restarts="$MAX_RESTARTS" --termination-grace-period-seconds="$GRACE_SECONDS" ${storage[@]+"${storage[@]}"}
}

list() {
  xpk_flags
  run xpk workload list "${XPK_FLAGS[@]}"
}

delete() {
  xpk_flags
  run xpk workload delete "${XPK_FLAGS[@]}" --workload="$WORKLOAD"
}

command=${1:-}
case "$command" in
  image | create | list | delete)
    [ $# -eq 1 ] || die "$command takes no arguments"
    "$command" ;;
  *) sed -n '/^# Usage:/,/^# Settings/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
