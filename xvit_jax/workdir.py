"""The workdir: where a run's checkpoints, metrics.jsonl and TensorBoard files go, a local directory or a
Cloud Storage prefix (`gs://bucket/path`, written through orbax's and tensorstore's own gs:// support, no
mount needed), and one training run at a time in it.

A second run started on the same workdir (by mistake, or a scheduler restarting a job that is still
alive) would interleave checkpoints and metrics with the first; it stops at start-up instead, naming the
run that holds the lock. On a local or network disk the lock is fcntl's, released by the kernel when its
process ends, so a run killed with SIGKILL leaves nothing to clean up (NFSv4 and Lustre share it between
hosts; gcsfuse does not, and there it is only local). In a gs:// workdir it is an object with a heartbeat
(object_lock.py). Only process 0 of a multi-host run takes it.

orbax completes each checkpoint step by renaming its temporary directory. A gcsfuse mount of a bucket
without hierarchical namespace refuses directory renames unless mounted with --rename-dir-limit, and the
first save would fail after minutes of training; a local workdir is therefore probed with a directory
rename before anything else is written.
"""

import contextlib
import fcntl
import os
import shutil

from xvit_jax import object_lock
from xvit_jax.errors import UserError

LOCK_FILE = ".lock"
PROBE = ".rename-probe"


def is_remote(path):
  """True for a Cloud Storage path (gs://bucket/...), which orbax, tensorstore and epath open themselves."""
  return str(path).startswith("gs://")


def resolve(path):
  """`path` absolute if local (checkpoint managers want absolute paths), as given if remote."""
  return str(path) if is_remote(path) else os.path.abspath(path)


@contextlib.contextmanager
def exclusive(workdir, active=True):
  """Holds workdir's lock for the `with` block (does nothing when not `active`); a local workdir is first
  checked for directory renames."""
  if not active:
    yield
  elif is_remote(workdir):
    with object_lock.exclusive(workdir):
      yield
  else:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise UserError(f"workdir {workdir} cannot be created ({e.strerror or e})") from None
    with _file_lock(workdir):
      check_renames(workdir)
      yield


def check_renames(workdir):
  """UserError naming the mount option if a directory holding a file cannot be renamed in `workdir`."""
  source, target = os.path.join(workdir, PROBE), os.path.join(workdir, PROBE + "-renamed")
  for leftover in (source, target):  # a run killed mid-probe
    shutil.rmtree(leftover, ignore_errors=True)
  try:
    os.makedirs(source)
    with open(os.path.join(source, "file"), "w"):
      pass
  except OSError as e:  # a read-only mount, a full disk, no permission
    raise UserError(f"workdir {workdir} cannot be written ({e.strerror or e})") from None
  try:
    os.rename(source, target)
  except OSError as e:
    shutil.rmtree(source)
    raise UserError(f"workdir {workdir} cannot rename directories ({e.strerror or e}), and every checkpoint is a "
                    "directory renamed when complete: on gcsfuse mount the bucket with --rename-dir-limit=200000 "
                    "(mountOptions rename-dir-limit=200000 on GKE), or use --workdir=gs://BUCKET/PATH") from None
  shutil.rmtree(target)


@contextlib.contextmanager
def _file_lock(workdir):
  path = os.path.join(workdir, LOCK_FILE)
  try:
    f = open(path, "a+")  # pylint: disable=consider-using-with  # closed by the with below
  except OSError as e:
    raise UserError(f"workdir {workdir} cannot be written ({e.strerror or e})") from None
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise UserError(f"workdir {workdir} is in use by another training run ({holder}); stop it or choose "
                      "another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(object_lock.owner())
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()
      fcntl.flock(f, fcntl.LOCK_UN)
