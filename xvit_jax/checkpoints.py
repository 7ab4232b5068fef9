"""orbax checkpoints of the train state in `workdir/checkpoints/<step>`; the newest one is resumed."""

import os

import orbax.checkpoint as ocp


def manager(workdir, *, keep=3):
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(mngr, step, state):
  mngr.save(step, args=ocp.args.StandardSave(state))


def restore_latest(mngr, abstract_state):
  """The newest complete checkpoint laid out like `abstract_state` (shapes and shardings), or None."""
  step = mngr.latest_step()
  if step is None:
    return None
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
