#!/usr/bin/env bash
# Sets up a cloud VM to run xvit_jax: runs ON the VM, from the repository copy that holds this file.
# launch/tpu_pod.sh install runs it on every worker of a TPU pod slice; on a single GPU or TPU VM run it
# yourself after copying the repository there.
#
#   bash launch/vm_setup.sh install   # Python venv in <repo>/.venv, pinned requirements, JAX for the
#                                     # accelerator, and the bucket mounted when BUCKET is set
#   bash launch/vm_setup.sh mount     # only mount the bucket (again, e.g. after a reboot)
#
# Prerequisites: Ubuntu (the Cloud TPU VM images are), sudo, curl, access to the internet (PyPI, the uv
# installer, and packages.cloud.google.com for gcsfuse); for the bucket, a VM service account that may
# read and write it (the default compute service account of the project can).
#
# Settings (environment):
#   JAX_EXTRA       tpu | cuda12 | cpu      which JAX build to add to the requirements (default tpu)
#   PYTHON_VERSION  3.12                    uv installs it when the image has an older Python (Ubuntu 22.04: 3.10)
#   BUCKET          ""                      Cloud Storage bucket (name, no gs://) to mount read-only with gcsfuse
#   MOUNT_DIR       /mnt/gcs                where to mount it
#   DRY_RUN=1                               print the commands instead of running them
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JAX_EXTRA=${JAX_EXTRA:-tpu}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
BUCKET=${BUCKET:-}
MOUNT_DIR=${MOUNT_DIR:-/mnt/gcs}
DRY_RUN=${DRY_RUN:-0}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # show, run (DRY_RUN=1 prints)

install_python() {
  export PATH="$HOME/.local/bin:$PATH"
  if ! command -v uv >/dev/null 2>&1; then
    run sh -c 'curl -LsSf https://astral.sh/uv/install.sh | sh'  # installs uv into ~/.local/bin
  fi
  run uv venv --seed --allow-existing --python "$PYTHON_VERSION" "$REPO_ROOT/.venv"
  run "$REPO_ROOT/.venv/bin/pip" install -r "$REPO_ROOT/requirements.txt"
  local jax_version
  jax_version=$(sed -n 's/^jax==//p' "$REPO_ROOT/requirements.txt")
  case "$JAX_EXTRA" in
    cpu) ;;
    tpu | cuda12) run "$REPO_ROOT/.venv/bin/pip" install -U "jax[$JAX_EXTRA]==$jax_version" ;;
    *) echo "JAX_EXTRA must be tpu, cuda12 or cpu (got '$JAX_EXTRA')" >&2; exit 2 ;;
  esac
}

mount_bucket() {
  if [ -z "$BUCKET" ]; then
    echo "BUCKET is empty: nothing to mount" >&2
    return
  fi
  if ! command -v gcsfuse >/dev/null 2>&1; then
    # shellcheck disable=SC2016  # expanded by the inner shell
    # Google's apt repository for gcsfuse, as its installation guide sets it up
    local key=/usr/share/keyrings/cloud.google.asc
    local repo="deb [signed-by=$key] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main"
    local steps="echo \"$repo\" > /etc/apt/sources.list.d/gcsfuse.list"
    steps+=" && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg -o $key"
    steps+=" && apt-get update -q && apt-get install -y -q gcsfuse"
    run sudo sh -c "$steps"
  fi
  if mountpoint -q "$MOUNT_DIR"; then
    echo "$MOUNT_DIR is already mounted" >&2
    return
  fi
  run sudo mkdir -p "$MOUNT_DIR"
  run sudo chown "$(id -u):$(id -g)" "$MOUNT_DIR"
  # --implicit-dirs: see folders that other tools (gcloud storage cp) created without folder objects;
  # read-only: the mount serves data, the workdir is written to gs:// directly (orbax renames a checkpoint's
  # directory when complete, which gcsfuse refuses on flat buckets without --rename-dir-limit)
  run gcsfuse --implicit-dirs -o ro "$BUCKET" "$MOUNT_DIR"
}

case "${1:-}" in
  install) install_python; if [ -n "$BUCKET" ]; then mount_bucket; fi ;;
  mount) mount_bucket ;;
  *) echo "usage: $0 install|mount" >&2; exit 2 ;;
esac
