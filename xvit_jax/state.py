"""The one train state: its creation (sharded, or abstract for ahead-of-time compilation), its checkpoint
items, and its restoring, for training and for inference. A dict:

  step             int32 (): optimizer steps taken
  rng              uint32 key data of jax.random.key(config.seed); each step folds its number in
  params           nnx.State of the model's nnx.Param variables; nnx.merge(graphdef, params) is the model
  opt_state        the optax state of `tx` over params
  nonfinite_steps  int32 (): steps whose loss or gradients were NaN/Inf (their update was not applied)

On disk (checkpoints.py) it is two items: "params", the parameters as a nested dict of arrays, and
"train", the rest.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from xvit_jax import checkpoints, config_lib, sharding
from xvit_jax.models import create_model

TRAIN_KEYS = ("step", "rng", "opt_state", "nonfinite_steps")  # the "train" checkpoint item


def _make_model(config):
  return create_model(config.model, dtype=config.dtype, seed=config.seed)


def initial(params, tx, seed):
  """The state at step 0 around `params` (an nnx.State of Params)."""
  return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(seed)), "params": params,
          "opt_state": tx.init(params), "nonfinite_steps": jnp.zeros((), jnp.int32)}


def _init_fn(config, tx):
  return lambda: initial(nnx.state(_make_model(config), nnx.Param), tx, config.seed)


def abstract(config, tx, mesh):
  """(graphdef, state, shardings) with the state's leaves jax.ShapeDtypeStructs that carry their sharding:
  nothing is allocated; jax.jit(step).lower(state, batch) compiles ahead of time from it."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: _make_model(config)))
  shapes = jax.eval_shape(_init_fn(config, tx))
  shardings = sharding.shardings_for(shapes, mesh)
  placed = jax.tree.map(lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where), shapes, shardings)
  return graphdef, placed, shardings


def create(config, tx, mesh):
  """(graphdef, state, shardings): the state created directly in its sharded layout (sharding.RULES) by a
  jit with out_shardings, never whole on one device."""
  graphdef, _, shardings = abstract(config, tx, mesh)
  return graphdef, jax.jit(_init_fn(config, tx), out_shardings=shardings)(), shardings


def params_item(state):
  """The "params" checkpoint item: the parameters as a nested dict of arrays (nnx.to_pure_dict)."""
  return nnx.to_pure_dict(state["params"])


def train_item(state):
  """The "train" checkpoint item: everything resuming needs besides the parameters."""
  return {key: state[key] for key in TRAIN_KEYS}


def set_params(state, pure):
  """Puts `pure` (a nested dict shaped like params_item(state)) into the state's parameters, in place."""
  nnx.replace_by_pure_dict(state["params"], pure)


def save(ckpt, step, state, data=None, metrics=None, *, force=False):
  """Checkpoint `step` of the state (and the grain iterator `data`); see checkpoints.save."""
  checkpoints.save(ckpt, step, params_item(state), train_item(state), data, metrics, force=force)


def restore(state, ckpt, step):
  """Puts checkpoint `step` into `state` (laid out as it is): its parameters and, when it has them, the rest
  (True); False for a weights-only checkpoint (tools.import_official), whose step, RNG and optimizer
  state stay as they are."""
  set_params(state, checkpoints.restore_params(ckpt, step, params_item(state)))
  if not checkpoints.has_item(ckpt, step, checkpoints.TRAIN):
    return False
  state.update(checkpoints.restore_train(ckpt, step, train_item(state)))
  return True


def inference_model(config, checkpoint_dir=None):
  """(model, step): the nnx model of `config` on the default device, with the parameters of the newest
  checkpoint in `checkpoint_dir`, or initialised from config.seed (step None) when it is None."""
  config_lib.check(config, num_devices=1)
  model = _make_model(config)
  step = None
  if checkpoint_dir is not None:
    params = nnx.state(model, nnx.Param)
    step, restored = checkpoints.latest_params(checkpoint_dir, nnx.to_pure_dict(params))
    nnx.replace_by_pure_dict(params, restored)
    nnx.update(model, params)
  return model, step
