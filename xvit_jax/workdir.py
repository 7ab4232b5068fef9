"""One training run per workdir: an advisory lock held while `main` trains.

A second run started on the same workdir (by mistake, or a scheduler restarting a job that is still
alive) would interleave checkpoints and metrics with the first; it stops at start-up instead, naming the
run that holds the lock. The lock is fcntl's, released by the kernel when its process ends, so a run
killed with SIGKILL leaves nothing to clean up. Only process 0 of a multi-host run takes it (on the shared
filesystem's lock support: NFSv4 and Lustre have it; gcsfuse does not, and there the lock is only local).
"""

import contextlib
import datetime
import fcntl
import os
import socket

from xvit_jax.errors import UserError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def exclusive(workdir, active=True):
  """Holds workdir's lock for the `with` block (does nothing when not `active`)."""
  if not active:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise UserError(f"workdir {workdir} is in use by another training run ({holder}); stop it or choose "
                      "another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.datetime.now().isoformat(timespec='seconds')}")
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()
      fcntl.flock(f, fcntl.LOCK_UN)
