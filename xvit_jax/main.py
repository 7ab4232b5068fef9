"""Command line: python -m xvit_jax.main --config=configs/demo.py --workdir=DIR [--config.FIELD=VALUE ...]"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from xvit_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py), optionally 'file.py:arg'.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard files.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"],
                          "train (resuming from the workdir's newest checkpoint) or evaluate that checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # keep orbax/grain chatter out of the progress lines
  from xvit_jax import train  # imports JAX; after flag parsing so --help stays fast
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, mode=_MODE.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
