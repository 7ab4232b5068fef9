"""What the config checks of every module share: one-line errors that name the field.

Each module owning a config section has `default_config()` (its ConfigDict section) and
`check_config(config, ...)` (raises UserError through these helpers); `config_lib` assembles and runs them.
"""

from xvit_jax.errors import UserError


def fail(field, value, allowed):
  raise UserError(f"config.{field}={value!r} is not allowed: {allowed}")


def get(config, field):
  """config["a.b.c"] for a dotted field name."""
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def find(config, field):
  """config["a.b.c"], or None where a part is missing (a config written before the field existed)."""
  try:
    return get(config, field)
  except KeyError:
    return None


def put(config, field, value):
  """config["a.b.c"] = value."""
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def positive_int(config, field):
  value = get(config, field)
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    fail(field, value, "it must be a positive integer")
  return value


def non_negative(config, *fields):
  for field in fields:
    if get(config, field) < 0:
      fail(field, get(config, field), "an integer >= 0")


def one_of(config, field, allowed):
  if get(config, field) not in allowed:
    fail(field, get(config, field), f"one of {', '.join(allowed)}")


def rate(config, *fields):
  for field in fields:
    if not 0.0 <= get(config, field) < 1.0:
      fail(field, get(config, field), "a rate in [0, 1)")
