"""orbax checkpoints in `DIR/checkpoints/<step>/`, two items per step:

  params/  the model parameters (a nested dict, as `nnx.to_pure_dict(state)` gives them)
  train/   {"step", "opt_state"}: what resuming training needs besides the parameters

A checkpoint written by `tools.import_official` (or any other weights-only export) has `params` alone;
training from it starts a fresh optimizer at step 0. orbax writes each step to a temporary directory and
renames it when complete, so a half-written step is never picked up.
"""

import os

import orbax.checkpoint as ocp

from xvit_jax import trees
from xvit_jax.errors import UserError

PARAMS, TRAIN = "params", "train"


def manager(directory, *, keep=3, create=True):
  path = os.path.abspath(os.path.join(directory, "checkpoints"))
  if not create and not os.path.isdir(path):
    raise UserError(f"no checkpoint in {path}")
  handlers = {PARAMS: ocp.StandardCheckpointHandler(), TRAIN: ocp.StandardCheckpointHandler()}
  return ocp.CheckpointManager(path, item_handlers=handlers,
                               options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create))


def save(mngr, step, params, train=None):
  """Saves `params` (pure nested dict) and, if given, the `train` item ({"step", "opt_state"})."""
  items = {PARAMS: ocp.args.StandardSave(params)}
  if train is not None:
    items[TRAIN] = ocp.args.StandardSave(train)
  mngr.save(step, args=ocp.args.Composite(**items))


def write_params(directory, params, step=0):
  """A weights-only checkpoint in `directory` (used by the import and conversion tools)."""
  mngr = manager(directory)
  save(mngr, step, params)
  mngr.wait_until_finished()
  mngr.close()


def has_train_state(mngr, step):
  return os.path.isdir(os.path.join(str(mngr.directory), str(step), TRAIN))


def _shapes(tree):
  return {name: tuple(leaf.shape) for name, leaf in trees.flatten(tree).items()}


def check_fits(mngr, step, params):
  """UserError naming the parameter and both shapes if the stored parameters are not shaped like `params`."""
  stored = _shapes(mngr.item_metadata(step)[PARAMS].tree)
  wanted = _shapes(params)
  where = os.path.join(str(mngr.directory), str(step))
  missing, unexpected = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
  if missing or unexpected:
    raise UserError(f"checkpoint {where} is from another model config: missing parameters {missing[:5] or 'none'}, "
                    f"unexpected parameters {unexpected[:5] or 'none'}")
  for name, shape in wanted.items():
    if stored[name] != shape:
      raise UserError(f"checkpoint {where} is from another model config: parameter {name} has shape "
                      f"{stored[name]}, the config needs {shape}")


def restore_params(mngr, step, params):
  """The parameters of `step`, laid out (shapes, dtypes, shardings) like the template `params`."""
  check_fits(mngr, step, params)
  return mngr.restore(step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(params)}))[PARAMS]


def restore_train(mngr, step, train):
  return mngr.restore(step, args=ocp.args.Composite(**{TRAIN: ocp.args.StandardRestore(train)}))[TRAIN]


def latest_params(directory, params):
  """(step, parameters) of the newest checkpoint under `directory`, shaped like the template `params`."""
  mngr = manager(directory, create=False)
  step = mngr.latest_step()
  if step is None:
    raise UserError(f"no checkpoint in {os.path.join(directory, 'checkpoints')}")
  restored = restore_params(mngr, step, params)
  mngr.close()
  return step, restored
