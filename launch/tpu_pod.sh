#!/usr/bin/env bash
# Train xvit_jax on a Cloud TPU VM pod slice (v4-32: 4 hosts of 4 chips; any vN-M works), one process per
# host, all running the same command. See launch/README.md.
#
# Prerequisites, on the machine you run this from:
#   - the gcloud CLI, logged in (gcloud auth login), with a project that has TPU quota in ZONE
#   - your SSH key in the agent: ssh-add ~/.ssh/google_compute_engine (gcloud needs it for --worker=all;
#     the first `gcloud compute tpus tpu-vm ssh` creates the key)
#   - a place every host sees for WORKDIR (checkpoints) and DATA_DIR (data prepared with
#     python -m xvit_jax.data.prepare): a Cloud Storage bucket in the TPU's region (BUCKET: the workdir is
#     gs://BUCKET/xvit/TPU_NAME, written by orbax itself; the data is read through a read-only gcsfuse
#     mount on every host, made by `install`), or your own shared filesystem (set WORKDIR and DATA_DIR)
#   - this repository as a git checkout (install copies its tracked and untracked, not ignored files),
#     or REPO_URL: a git URL every host can clone
#
# Usage: launch/tpu_pod.sh COMMAND
#   create [--queued] [--spot]  create the TPU VM (--queued: through a queued resource, which waits for
#                               capacity; --spot: spot capacity, cheaper and preemptible)
#   install                     copy the repository to every host, set up Python and JAX there
#                               (launch/vm_setup.sh), mount BUCKET
#   train                       start the trainer on every host in the background (nohup); logs in
#                               ~/xvit_logs/train-HOSTNAME.log on each host. Starting again resumes.
#   status                      whether the trainer runs on each host; the end of host 0's log
#   stop                        SIGTERM to every trainer: each saves a checkpoint and exits (status 143)
#   logs                        copy every host's ~/xvit_logs to LOCAL_LOGS
#   delete                      delete the TPU VM (and its queued resource)
#
# Settings (environment, defaults in brackets):
#   TPU_NAME [xvit-tpu]  ZONE [us-central2-b]  ACCELERATOR_TYPE [v4-32]  PROJECT [gcloud's default]
#   RUNTIME_VERSION [from the accelerator: v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
#                    v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e]
#   QUEUED [0]  SPOT [0]          same as create's --queued and --spot; give delete the same QUEUED
#   BUCKET [none]  MOUNT_DIR [/mnt/gcs]
#   CONFIG [configs/k400.py]  WORKDIR [gs://$BUCKET/xvit/$TPU_NAME]  DATA_DIR [$MOUNT_DIR/tfds, "" for none]
#   EXTRA_FLAGS [none]            more flags for python -m xvit_jax.main, e.g.
#                                 "--config.dtype=bfloat16 --config.init_from=/mnt/gcs/ViT-B_16.npz"
#   REPO_URL [none: copy this checkout]  REPO_REF [main]  LOCAL_LOGS [./tpu_logs/$TPU_NAME]
#   DRY_RUN=1                     print the commands instead of running them
set -euo pipefail
# (${array[@]+"${array[@]}"} below: an empty array under set -u in the bash 3.2 of macOS)

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TPU_NAME=${TPU_NAME:-xvit-tpu}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
case "$ACCELERATOR_TYPE" in
  v5litepod-*) default_runtime=v2-alpha-tpuv5-lite ;;
  v5p-*) default_runtime=v2-alpha-tpuv5 ;;
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  *) default_runtime=tpu-ubuntu2204-base ;;
esac
RUNTIME_VERSION=${RUNTIME_VERSION:-$default_runtime}
PROJECT=${PROJECT:-}
QUEUED=${QUEUED:-0}
SPOT=${SPOT:-0}
BUCKET=${BUCKET:-}
MOUNT_DIR=${MOUNT_DIR:-/mnt/gcs}
CONFIG=${CONFIG:-configs/k400.py}
if [ -n "$BUCKET" ]; then WORKDIR=${WORKDIR:-gs://$BUCKET/xvit/$TPU_NAME}
else WORKDIR=${WORKDIR:-$MOUNT_DIR/xvit/$TPU_NAME}; fi
DATA_DIR=${DATA_DIR-$MOUNT_DIR/tfds}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
REPO_URL=${REPO_URL:-}
REPO_REF=${REPO_REF:-main}
LOCAL_LOGS=${LOCAL_LOGS:-./tpu_logs/$TPU_NAME}
DRY_RUN=${DRY_RUN:-0}

# On the hosts, relative to the home directory (where ssh commands start).
REMOTE_REPO=xvit_jax
REMOTE_LOGS=xvit_logs
QUEUED_RESOURCE="$TPU_NAME-qr"

GCLOUD_FLAGS=(--zone="$ZONE")
if [ -n "$PROJECT" ]; then GCLOUD_FLAGS+=(--project="$PROJECT"); fi

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # show, run (DRY_RUN=1 prints)

# Run a shell command on every host of the slice at once.
on_all_hosts() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=all --command="$1"
}

check_shared_paths() {
  case "$WORKDIR" in
    "$MOUNT_DIR"/*)
      if [ -z "$BUCKET" ]; then
        die "WORKDIR=$WORKDIR is under MOUNT_DIR but no BUCKET is set: set BUCKET," \
            "or WORKDIR and DATA_DIR to a filesystem every host sees"
      fi
      die "WORKDIR=$WORKDIR is in the bucket's read-only mount (data only): leave WORKDIR unset for" \
          "gs://$BUCKET/xvit/$TPU_NAME, or set it to another gs:// path" ;;
  esac
}

create() {
  local spot=()
  for arg in "$@"; do
    case "$arg" in
      --queued) QUEUED=1 ;;
      --spot) SPOT=1 ;;
      *) die "create: unknown option $arg" ;;
    esac
  done
  if [ "$SPOT" = 1 ]; then spot=(--spot); fi
  if [ "$QUEUED" = 1 ]; then
    run gcloud compute tpus queued-resources create "$QUEUED_RESOURCE" "${GCLOUD_FLAGS[@]}" --node-id="$TPU_NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
    echo "queued; the TPU exists once this shows ACTIVE (then run install; delete needs QUEUED=1):" >&2
    echo "  gcloud compute tpus queued-resources describe $QUEUED_RESOURCE --zone=$ZONE" >&2
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
  fi
}

install() {
  if [ -n "$REPO_URL" ]; then
    local url ref
    url=$(show "$REPO_URL")
    ref=$(show "$REPO_REF")
    local update="git -C $REMOTE_REPO fetch --depth 1 $url $ref && git -C $REMOTE_REPO checkout --force FETCH_HEAD"
    on_all_hosts "if [ -d $REMOTE_REPO/.git ]; then $update; else git clone --depth 1 --branch $ref $url $REMOTE_REPO; fi"
  else
    git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1 || die "$REPO_ROOT is not a git checkout: set REPO_URL"
    local tarball="${TMPDIR:-/tmp}/xvit_jax-$TPU_NAME.tar.gz"
    # the files git knows about and does not ignore: no .venv, workdirs or caches
    run bash -c 'cd "$1" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf "$2"' \
      pack "$REPO_ROOT" "$tarball"
    run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:xvit_jax.tar.gz" "${GCLOUD_FLAGS[@]}" --worker=all
    on_all_hosts "mkdir -p $REMOTE_REPO && tar -xzf xvit_jax.tar.gz -C $REMOTE_REPO && rm xvit_jax.tar.gz"
  fi
  local settings="JAX_EXTRA=tpu"
  if [ -n "$BUCKET" ]; then settings+=" BUCKET=$(show "$BUCKET") MOUNT_DIR=$(show "$MOUNT_DIR")"; fi
  on_all_hosts "cd $REMOTE_REPO && $settings bash launch/vm_setup.sh install"
}

# A test, on a host, that the trainer whose files start with $1 runs; with $2 = TERM it also signals it.
trainer_alive() {
  echo "[ -f $1.pid ] && kill -${2:-0} \$(cat $1.pid) 2>/dev/null"
}

train() {
  check_shared_paths
  local args=(.venv/bin/python -m xvit_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
  if [ -n "$DATA_DIR" ]; then args+=("--config.data.data_dir=$DATA_DIR"); fi
  local extra=()
  read -r -a extra <<< "$EXTRA_FLAGS"
  args+=(${extra[@]+"${extra[@]}"})
  local files="../$REMOTE_LOGS/train-\$(hostname)"  # from the repository; $(hostname) is expanded on each host
  local steps=("mkdir -p $REMOTE_LOGS" "cd $REMOTE_REPO")
  if [ -n "$BUCKET" ]; then
    steps+=("BUCKET=$(show "$BUCKET") MOUNT_DIR=$(show "$MOUNT_DIR") bash launch/vm_setup.sh mount")
  fi
  steps+=("if $(trainer_alive "$files"); then echo \"\$(hostname): already running\"; exit 1; fi")
  # no trainer of ours runs: a process still holding the chips (a killed run's leftover, a notebook) or a
  # stale libtpu lock file would make the new one fail with "TPU in use", as maxtext clears them too
  steps+=("{ sudo -n fuser -k -9 /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; sudo -n rm -f /tmp/libtpu_lockfile 2>/dev/null; true; }")
  steps+=("{ nohup $(show "${args[@]}") >> $files.log 2>&1 < /dev/null & echo \$! > $files.pid; echo \"\$(hostname): started, pid \$!\"; }")
  local command
  command=$(printf ' && %s' "${steps[@]}")
  on_all_hosts "${command# && }"
  echo "follow it with: $0 status (or $0 logs)" >&2
}

status() {
  local files="$REMOTE_LOGS/train-\$(hostname)"
  on_all_hosts "if $(trainer_alive "$files"); then echo \"\$(hostname): running\"; else echo \"\$(hostname): not running\"; fi"
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=0 --command="tail -n 20 $files.log"
}

stop() {
  local files="$REMOTE_LOGS/train-\$(hostname)"
  on_all_hosts "if $(trainer_alive "$files" TERM); then echo \"\$(hostname): SIGTERM sent\"; else echo \"\$(hostname): not running\"; fi"
}

logs() {
  run mkdir -p "$LOCAL_LOGS"
  # gcloud refuses --worker=all when copying to this machine ("cannot target multiple workers while copying
  # files to client"): one copy per host, their number from the TPU's network endpoints (with DRY_RUN=1 the
  # query is printed and DRY_RUN_HOSTS [2] answers it). Every host has its own file names
  # (train-HOSTNAME.*), so the copies land side by side.
  local describe=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}"
                  "--format=value(networkEndpoints.len())")
  local hosts
  if [ "${DRY_RUN:-0}" = 1 ]; then
    show "${describe[@]}"
    hosts=${DRY_RUN_HOSTS:-2}
  else
    hosts=$("${describe[@]}")
  fi
  [[ $hosts =~ ^[1-9][0-9]*$ ]] || die "$TPU_NAME: cannot tell its number of hosts (got '$hosts')"
  local worker
  for ((worker = 0; worker < hosts; worker++)); do
    run gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:$REMOTE_LOGS" "$LOCAL_LOGS" "${GCLOUD_FLAGS[@]}" \
      --worker="$worker"
  done
}

delete() {
  if [ "$QUEUED" = 1 ]; then
    run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" "${GCLOUD_FLAGS[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet
  fi
}

command=${1:-}
shift || true
case "$command" in
  create) create "$@" ;;
  install | train | status | stop | logs | delete)
    [ $# -eq 0 ] || die "$command takes no arguments"
    "$command" ;;
  *) sed -n '/^# Usage:/,/^# Settings/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
