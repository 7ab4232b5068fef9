"""Train batches placed on the devices one step ahead, and the data position of the batches steps used.

While the devices run step k, a thread takes batch k+1 from the grain iterator and places it
(sharding.global_batch: an asynchronous transfer), so the step after needs no host work to start. A
checkpoint saves the data position after the last batch a step *took*, never the one held ahead: a resumed
run continues with exactly the batch an uninterrupted run would have trained on next.
"""

import json
import queue
import threading


class DevicePrefetch:
  """Iterator of `place(batch)` over the grain iterator `batches`, `ahead` batches (made and placed) before
  the one taken, `count` batches in all (None: as many as `batches` gives). `get_state()` is the data
  position after the last batch taken, for grain's orbax checkpoint handler (checkpoints.save); restore the
  grain iterator before wrapping it (restore_data). An error making a batch (a UserError from the pipeline,
  the end of the stream) is raised where that batch is taken. `close()` stops the thread."""

  def __init__(self, batches, place, *, ahead=1, count=None):
    self.batches, self.place, self.count = batches, place, count
    self.state = batches.get_state()  # after the batches taken so far: none yet
    self.ready, self.slots, self.stopping = queue.Queue(), threading.Semaphore(ahead), threading.Event()
    self.thread = None

  def _fill(self):
    try:
      made = 0
      while self.count is None or made < self.count:
        self.slots.acquire()  # a batch was taken: make the next
        if self.stopping.is_set():
          return
        made += 1
        batch = self.place(next(self.batches))
        self.ready.put((batch, self.batches.get_state(), None))
      raise StopIteration
    except BaseException as e:  # noqa: BLE001 - raised in the loop's thread, where the batch is taken
      self.ready.put((None, None, e))

  def __iter__(self):
    return self

  def __next__(self):
    if self.thread is None:
      self.thread = threading.Thread(target=self._fill, name="device-prefetch", daemon=True)
      self.thread.start()
    batch, state, error = self.ready.get()
    if error is not None:
      self.ready.put((None, None, error))  # and again at every later call
      raise error
    self.state = state
    self.slots.release()
    return batch

  def get_state(self):
    """The grain iterator's state after the last batch taken, as bytes (grain's checkpoint handler writes
    the state of an iterator that is not grain's own from bytes; JSON, as it writes grain's own)."""
    return json.dumps(self.state, indent=4).encode()

  def close(self):
    """Stops the thread (after the batch it is making, if any)."""
    self.stopping.set()
    self.slots.release()
    if self.thread is not None:
      self.thread.join(timeout=60)
