"""The one-run-per-workdir lock of a `gs://` workdir: an object, WORKDIR/.lock, that holds its owner.

Cloud Storage has no advisory locks, and a process killed with SIGKILL (or a host that dies) cleans up
nothing, so the lock is a lease:

- taken by creating the object with a does-not-exist precondition (ifGenerationMatch=0): of two runs
  starting together, exactly one creates it;
- kept alive by a heartbeat: every HEARTBEAT_S the owner rewrites it on the condition that it is still
  the generation it wrote last; a run that finds it changed has been taken over, and stops at once;
- taken over when stale: a run that finds the lock held watches its generation; unchanged for
  STALE_HEARTBEATS heartbeats (no owner alive to rewrite it), it replaces it on the condition that it is
  still that generation, so of two runs taking over together exactly one wins. A run that sees the
  generation change (a live owner) refuses at once. Generations are the server's, so no clock is compared.
- released (deleted, on the condition that it is still ours) when the run ends, preempted or not.

The heartbeat interval is XVIT_JAX_LOCK_HEARTBEAT_S seconds (15 unless set; the tests shorten it): a
restart after a SIGKILL waits at most 4 of them before it resumes.
"""

import contextlib
import datetime
import os
import socket
import sys
import threading
import time

from xvit_jax.errors import UserError

HEARTBEAT_S = float(os.environ.get("XVIT_JAX_LOCK_HEARTBEAT_S", "15"))
STALE_HEARTBEATS = 4


def _blob(path):
  from google.cloud import storage  # pylint: disable=import-outside-toplevel  # only gs:// workdirs need it
  bucket, _, name = path[len("gs://"):].partition("/")
  return storage.Client().bucket(bucket).blob(name)


def owner():
  """Who holds a lock: this process, its host and since when (the local lock file holds the same line)."""
  since = datetime.datetime.now().isoformat(timespec="seconds")
  return f"pid {os.getpid()} on {socket.gethostname()} since {since}"


@contextlib.contextmanager
def exclusive(workdir):
  """Holds gs:// `workdir`'s lock object for the `with` block."""
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  lock = workdir.rstrip("/") + "/.lock"
  mine = _blob(lock)
  line = _acquire(mine, workdir, exceptions)
  stop = threading.Event()
  beat = threading.Thread(target=_heartbeat, args=(mine, line, lock, stop, exceptions), daemon=True)
  beat.start()
  try:
    yield
  finally:
    stop.set()
    beat.join()
    with contextlib.suppress(exceptions.GoogleAPIError):  # gone or taken over: nothing of ours to delete
      mine.delete(if_generation_match=mine.generation)


def _acquire(mine, workdir, exceptions):
  """Creates the lock object, or replaces a stale one; UserError naming the holder when it is alive."""
  mine_line = owner()
  expected = 0  # the generation the upload must replace: 0 is "the object does not exist"
  while True:
    try:
      mine.upload_from_string(mine_line, if_generation_match=expected)
      return mine_line
    except exceptions.PreconditionFailed:
      pass
    held = mine.bucket.get_blob(mine.name)
    watched, deadline = held and held.generation, time.monotonic() + STALE_HEARTBEATS * HEARTBEAT_S
    while held is not None and held.generation == watched and time.monotonic() < deadline:
      time.sleep(HEARTBEAT_S / 4)
      held = mine.bucket.get_blob(mine.name)
    if held is None:  # released meanwhile
      expected = 0
    elif held.generation == watched:  # no heartbeat for STALE_HEARTBEATS intervals: replace exactly that one
      expected = watched
    else:
      holder = held.download_as_text().strip() or "another process"
      raise UserError(f"workdir {workdir} is in use by another training run ({holder}; its lock object "
                      f"{workdir.rstrip('/')}/.lock has a live heartbeat); stop it or choose another --workdir")


def _heartbeat(mine, line, lock, stop, exceptions):
  while not stop.wait(HEARTBEAT_S):
    try:
      mine.upload_from_string(line, if_generation_match=mine.generation)
    except exceptions.PreconditionFailed:
      sys.stderr.write(f"error: the workdir lock {lock} was taken over by another run (this one wrote no heartbeat "
                       f"for {STALE_HEARTBEATS * HEARTBEAT_S:.0f} s); stopping this run so the two do not mix\n")
      sys.stderr.flush()
      os._exit(2)  # pylint: disable=protected-access
    except exceptions.GoogleAPIError:  # a transient error: the next heartbeat tries again
      continue
