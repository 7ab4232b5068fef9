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

A checkpoint restores into any layout of the same parameters (layouts.py): written block by block and restored
into a model that stores its blocks stacked (model.scan_layers), or the other way round, or written before the
head-aligned qkv kernel; the parameters and their optimizer moments are converted on restore.
"""

import contextlib
import os
import re

import grain
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
import jax
from jax.sharding import NamedSharding, PartitionSpec
from orbax.checkpoint import checkpoint_managers

from xvit_jax import layouts
from xvit_jax import workdir as workdir_lib
from xvit_jax.errors import UserError

PARAMS, TRAIN, DATA = "params", "train", "data"
BEST_METRIC = "eval/top1"


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


def check_fits(mngr, step, params):
  """UserError naming the parameter (block by block, as layouts.pieces) and both shapes if the stored
  parameters are not those of `params` in any layout."""
  shapes_of = lambda tree: {name: tuple(leaf.shape) for name, leaf in _flat(tree).items()}
  missing, unexpected, shapes = layouts.mismatch(shapes_of(mngr.item_metadata(step)[PARAMS].tree), shapes_of(params))
  where = os.path.join(str(mngr.directory), str(step))
  if missing or unexpected:
    raise UserError(f"checkpoint {where} is from another model config: missing parameters {missing[:5] or 'none'}, "
                    f"unexpected parameters {unexpected[:5] or 'none'}")
  for name, stored_shape, shape in shapes[:1]:
    raise UserError(f"checkpoint {where} is from another model config: parameter {name} has shape "
                    f"{stored_shape}, the config needs {shape}")


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


def _flat(tree):
  """{name: leaf} of a checkpoint item, or of a template for one, named as _stored_name."""
  return {_stored_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _restore(mngr, step, item, template):
  """Item `item` of `step` laid out like `template` (shapes, dtypes, shardings). When the stored layout differs
  (layouts.py), each stored leaf is read in its own shape, sharded as the leaves it makes (replicated when it is
  reshaped), and they are assembled into the template's leaves and shardings."""
  meta, wanted = mngr.item_metadata(step)[item].tree, _flat(template)
  stored = {name: tuple(leaf.shape) for name, leaf in _flat(meta).items()}
  plan = layouts.sources(stored, {name: tuple(leaf.shape) for name, leaf in wanted.items()})
  if all(parts is None for parts in plan.values()):
    return mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(template)}))[item]
  reads = {}  # stored name -> (dtype, sharding) to read it with
  for name, parts in plan.items():
    for source, j in parts or [(name, None)]:
      reads[source] = (wanted[name].dtype, _read_sharding(getattr(wanted[name], "sharding", None), name, source, j,
                                                          stored[source], wanted[name].shape))
  as_read = lambda path, leaf: _read_as(leaf, *reads.get(_stored_name(path), (leaf.dtype, None)))
  read = jax.tree_util.tree_map_with_path(as_read, meta)
  restored = _flat(mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(read)}))[item])

  def converted(path, leaf):
    name = _stored_name(path)
    if plan[name] is None:
      return restored[name]
    value = layouts.assemble([(restored[source], j) for source, j in plan[name]], name, tuple(leaf.shape))
    return jax.device_put(value, leaf.sharding) if hasattr(leaf, "sharding") else np.asarray(value)
  return jax.tree_util.tree_map_with_path(converted, template)


def _read_as(stored, dtype, where):
  """What orbax reads the `stored` leaf into: an array placed `where`, or a numpy array without a placement (an
  unwritten one: its pages are never touched)."""
  return np.empty(stored.shape, dtype) if where is None else jax.ShapeDtypeStruct(stored.shape, dtype, sharding=where)


def _read_sharding(where, name, source, index, stored_shape, shape):
  """How to read the stored leaf `source` that makes (its block `index`, or all of it) the leaf `name` of `shape`
  placed `where`: with the placement of the part it makes (a block of a stacked leaf: the stacked leaf's without
  its leading axis, and the reverse), replicated when it changes shape otherwise (LEGACY); None: where."""
  if not isinstance(where, NamedSharding) or (index is None and stored_shape == tuple(shape)):
    return where
  spec = tuple(where.spec) + (None,) * (len(shape) - len(where.spec))
  piece = spec[1:] if layouts.is_stacked(name) else spec  # the placement of one block's parameter
  if index is not None and len(stored_shape) == len(piece) + 1:
    return NamedSharding(where.mesh, PartitionSpec(None, *piece))
  if index is None and len(stored_shape) == len(piece):
    return NamedSharding(where.mesh, PartitionSpec(*piece))
  return NamedSharding(where.mesh, PartitionSpec())


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
