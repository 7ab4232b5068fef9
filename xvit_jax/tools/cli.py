"""What the tools' command lines share: config flags and one-line errors."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from xvit_jax.errors import UserError


def run(main):
  """absl.app.run(main), printing a UserError as one line on stderr with exit status 2."""
  def guarded(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    try:
      main()
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  app.run(guarded)


def define_flags(*, config, checkpoint, output):
  """--config, --checkpoint and --output (all required) with the given help texts; their FlagHolders."""
  holders = (config_flags.DEFINE_config_file("config", None, config),
             flags.DEFINE_string("checkpoint", None, checkpoint), flags.DEFINE_string("output", None, output))
  flags.mark_flags_as_required(["config", "checkpoint", "output"])
  return holders
