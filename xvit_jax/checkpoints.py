"""orbax checkpoints in `DIR/checkpoints/<step>/` (DIR local or gs://), up to three items per step:

  params/  the model parameters (a nested dict, as `nnx.to_pure_dict(state)` gives them: state.params_item)
  train/   {"step", "rng", "opt_state", "nonfinite_steps"}: what resuming training needs besides the
           parameters (state.train_item)
  data/    the grain iterator's state, one JSON file per process: where the data stream resumes

Saving is asynchronous (the arrays are copied off the devices, then written while training goes on). A
step is written to a temporary directory and renamed when every item of every process is complete, so a
half-written step is never picked up. Kept: the newest `keep` steps and the one with the best
"eval/top1" (the metrics saved with it).

A checkpoint written by `tools.import_official` (or any other weights-only export) has `params` alone;
training from it starts a fresh optimizer at step 0.

Older layouts are converted on restore: checkpoints written before the head-aligned qkv kernel (C, 3, H, D)
hold it as (C, 3C) and its bias as (3C,), the same numbers in the same order (LEGACY_LAYOUTS).
"""

import contextlib
import math
import os
import re

import grain
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
import jax
from jax.sharding import NamedSharding, PartitionSpec
from orbax.checkpoint import checkpoint_managers

from xvit_jax import trees
from xvit_jax import workdir as workdir_lib
from xvit_jax.errors import UserError

PARAMS, TRAIN, DATA = "params", "train", "data"
BEST_METRIC = "eval/top1"
# Leaves (the parameters, and their optimizer moments, whose paths end the same) that older checkpoints hold in
# fewer dimensions, the same numbers in the same order: restored as stored, then reshaped.
LEGACY_LAYOUTS = (r"attn/qkv/(kernel|bias)$",)  # (C, 3C) and (3C,) before the head-aligned (C, 3, H, D)


def manager(directory, *, keep=3, create=True):
  path = workdir_lib.resolve(os.path.join(directory, "checkpoints"))  # a local or gs:// directory
  if not create and not epath.Path(path).is_dir():
    raise UserError(f"no checkpoint in {path}")
  handlers = {PARAMS: ocp.StandardCheckpointHandler(), TRAIN: ocp.StandardCheckpointHandler(),
              DATA: grain.checkpoint.CheckpointHandler()}
  score = lambda metrics: metrics.get(BEST_METRIC, float("-inf"))
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(get_metric_fn=score, n=1, keep_checkpoints_without_metrics=False)])
  # best_fn makes orbax store each step's metrics (an empty dict for steps saved without evaluation)
  options = ocp.CheckpointManagerOptions(create=create, preservation_policy=policy, best_fn=score, best_mode="max",
                                         cleanup_tmp_directories=create)  # leftovers of a killed write
  return ocp.CheckpointManager(path, item_handlers=handlers, options=options)


def save(mngr, step, params, train=None, data=None, metrics=None, *, force=False):
  """Saves `params` (pure nested dict) and, if given, the `train` item ({"step", "rng", "opt_state",
  "nonfinite_steps"}) and the grain iterator `data`; `metrics` ({"eval/top1": ...}) rank it for keeping
  the best."""
  items = {PARAMS: ocp.args.StandardSave(params)}
  if train is not None:
    items[TRAIN] = ocp.args.StandardSave(train)
  if data is not None:
    items[DATA] = grain.checkpoint.CheckpointSave(data)
  metrics = {BEST_METRIC: metrics[BEST_METRIC]} if metrics and BEST_METRIC in metrics else {}
  with _write_errors(mngr):  # the previous step's asynchronous write reports its failure here
    mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def wait(mngr):
  """Waits for the asynchronous writes; a failed one becomes a UserError."""
  with _write_errors(mngr):
    mngr.wait_until_finished()


def close(mngr):
  """Closes the manager; orbax's logging is held at FATAL meanwhile: a failed write it would repeat while
  closing was reported by save() or wait() already."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    mngr.close()
  except Exception:  # noqa: BLE001 - a failed write was reported by save() or wait() already
    pass
  finally:
    logging.set_verbosity(level)


# tensorstore's payloads after its message: [os_error_code='27'], [source locations='...'], [tensorstore_spec='{...}']
_PAYLOAD = re.compile(r" \[[\w ]+='[^']*'\]")


def _first_line(error, limit=400):
  """An exception's first line without tensorstore's payloads, its middle cut when long (the start names the
  file, the end the reason: a spec's JSON at the end would push "File too large" out of the line)."""
  line = _PAYLOAD.sub("", (str(error).strip().splitlines() or [type(error).__name__])[0])
  return line if len(line) <= limit else f"{line[:limit // 2]} ... {line[-limit // 2:]}"


@contextlib.contextmanager
def _write_errors(mngr):
  """A failed checkpoint write (disk full, file too large, permission) as one line; orbax wrote it to a
  temporary directory, so the newest complete checkpoint is untouched and is what a restart resumes from."""
  try:
    yield
  except (OSError, ValueError, RuntimeError) as e:
    reason = _first_line(e)
    mngr.reload()
    complete = mngr.all_steps()
    raise UserError(f"writing a checkpoint in {mngr.directory} failed: {reason}; the newest complete checkpoint "
                    f"({'step ' + str(max(complete)) if complete else 'none'}) is intact") from None


def best_step(mngr):
  """The kept step with the best eval/top1, or None if no kept step was evaluated."""
  scored = [(metrics[BEST_METRIC], step) for step in mngr.all_steps()
            if (metrics := mngr.metrics(step)) and BEST_METRIC in metrics]
  return max(scored)[1] if scored else None


def write_params(directory, params, step=0):
  """A weights-only checkpoint in `directory` (used by the import and conversion tools)."""
  mngr = manager(directory)
  save(mngr, step, params)
  mngr.wait_until_finished()
  mngr.close()


def has_item(mngr, step, item):
  return (epath.Path(mngr.directory) / str(step) / item).is_dir()


def _shapes(tree):
  return {name: tuple(leaf.shape) for name, leaf in trees.flatten(tree).items()}


def _legacy(stored, wanted):
  """{name: stored shape} of the leaves stored in an older layout (LEGACY_LAYOUTS) that restore reshapes."""
  return {name: stored[name] for name, shape in wanted.items()
          if name in stored and stored[name] != shape and len(stored[name]) < len(shape)
          and math.prod(stored[name]) == math.prod(shape) and any(re.search(p, name) for p in LEGACY_LAYOUTS)}


def check_fits(mngr, step, params):
  """UserError naming the parameter and both shapes if the stored parameters are not shaped like `params`."""
  stored = _shapes(mngr.item_metadata(step)[PARAMS].tree)
  wanted = _shapes(params)
  stored.update({name: wanted[name] for name in _legacy(stored, wanted)})
  where = os.path.join(str(mngr.directory), str(step))
  missing, unexpected = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
  if missing or unexpected:
    raise UserError(f"checkpoint {where} is from another model config: missing parameters {missing[:5] or 'none'}, "
                    f"unexpected parameters {unexpected[:5] or 'none'}")
  for name, shape in wanted.items():
    if stored[name] != shape:
      raise UserError(f"checkpoint {where} is from another model config: parameter {name} has shape "
                      f"{stored[name]}, the config needs {shape}")


@contextlib.contextmanager
def _read_errors(mngr, step, item):
  """A checkpoint that cannot be read (truncated, damaged, half-deleted) as one line; nothing is written."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds; all mean the same here
    while e.__cause__ or e.__context__:  # the root cause names the file and what is wrong with it
      e = e.__cause__ or e.__context__
    reason = _first_line(e)
    where = os.path.join(str(mngr.directory), str(step))
    raise UserError(f"checkpoint {where} cannot be read ({item}: {reason}): it is damaged or incomplete; move it "
                    "aside to resume from the one before it") from None


def _stored_name(path):
  """A leaf's name as the checkpoint's tree spells it: attribute names count (an optax state's "trace"), and an
  nnx Variable's array, stored as {"value": array}, is named by its Variable."""
  tu = jax.tree_util
  parts = [str(k.key) if isinstance(k, tu.DictKey) else str(k.idx) if isinstance(k, tu.SequenceKey) else k.name
           for k in path if not isinstance(k, tu.FlattenedIndexKey)]
  return "/".join(parts[:-1] if parts and parts[-1] == "value" else parts)


def _restore(mngr, step, item, template):
  """Item `item` of `step` laid out like `template`; leaves in a legacy layout are read in their stored shape
  (replicated) and reshaped into the template's shape and sharding."""
  shapes = lambda tree: {_stored_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  legacy = _legacy(shapes(mngr.item_metadata(step)[item].tree), shapes(template))

  def as_stored(path, leaf):
    shape = legacy.get(_stored_name(path))
    if shape is None:
      return leaf
    where = getattr(leaf, "sharding", None)  # None: a numpy template
    if isinstance(where, NamedSharding):
      where = NamedSharding(where.mesh, PartitionSpec())
    return jax.ShapeDtypeStruct(shape, leaf.dtype, sharding=where)

  def converted(path, value, leaf):
    if _stored_name(path) not in legacy:
      return value
    value = value.reshape(leaf.shape)
    return jax.device_put(value, leaf.sharding) if hasattr(leaf, "sharding") else value

  read = jax.tree_util.tree_map_with_path(as_stored, template) if legacy else template
  restored = mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(read)}))[item]
  return jax.tree_util.tree_map_with_path(converted, restored, template) if legacy else restored


def restore_params(mngr, step, params):
  """The parameters of `step`, laid out (shapes, dtypes, shardings) like the template `params`."""
  with _read_errors(mngr, step, PARAMS):
    check_fits(mngr, step, params)
    return _restore(mngr, step, PARAMS, params)


def restore_train(mngr, step, train):
  with _read_errors(mngr, step, TRAIN):
    return _restore(mngr, step, TRAIN, train)


def restore_data(mngr, step, iterator):
  """Sets the grain `iterator` to where it was when `step` was saved. ValueError if this process count
  has no saved state there."""
  try:
    mngr.restore(step, args=ocp.args.Composite(**{DATA: grain.checkpoint.CheckpointRestore(iterator)}))
  except ValueError as e:
    if "does not exist" in str(e):
      raise
    with _read_errors(mngr, step, DATA):
      raise


def latest_params(directory, params):
  """(step, parameters) of the newest checkpoint under `directory`, shaped like the template `params`."""
  mngr = manager(directory, create=False)
  step = mngr.latest_step()
  if step is None:
    raise UserError(f"no checkpoint in {os.path.join(directory, 'checkpoints')}")
  restored = restore_params(mngr, step, params)
  mngr.close()
  return step, restored


def saved_steps(workdir):
  """The complete checkpoint steps in workdir's checkpoints/ (none when it does not exist); writes nothing."""
  return ocp.utils.checkpoint_steps(os.path.join(workdir, "checkpoints"))
