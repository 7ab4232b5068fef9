"""What the tools' command lines share: config flags and one-line errors."""

import sys
import threading

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
      fail(e)
  app.run(guarded)


def fail(error):
  """Ends the process on a UserError: its one line on stderr, exit status 2.

  Only a command line, which owns the process, may do this: the process is ending, and background work
  that libraries abandoned (orbax's checkpoint threads after a failed write, tensorstore callbacks on a
  closed event loop) would print the same failure again as pages of tracebacks while it exits, so their
  logging and exception hooks are silenced for the rest of the process."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  logging.set_verbosity(logging.FATAL)
  sys.excepthook = sys.unraisablehook = threading.excepthook = lambda *_: None
  sys.exit(2)


def define_flags(*, config, checkpoint, output):
  """--config, --checkpoint and --output (all required) with the given help texts; their FlagHolders."""
  holders = (config_flags.DEFINE_config_file("config", None, config),
             flags.DEFINE_string("checkpoint", None, checkpoint), flags.DEFINE_string("output", None, output))
  flags.mark_flags_as_required(["config", "checkpoint", "output"])
  return holders
