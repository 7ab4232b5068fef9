"""What the tools' command lines share: config flags and one-line errors."""

import sys

from absl import app, logging

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
