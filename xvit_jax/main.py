"""Command line: python -m xvit_jax.main --config=configs/demo.py --workdir=DIR [--config.FIELD=VALUE ...]

Multi-host: run the same command in every process (see xvit_jax/distributed.py for how they find each
other). On SIGTERM (a preemption notice) training saves a checkpoint and exits with status 143; the same
command resumes it.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from xvit_jax.errors import UserError
from xvit_jax.tools import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py), optionally 'file.py:arg'.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard files "
                               "(multi-host: a path every host sees).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"],
                          "train (resuming from the workdir's newest checkpoint) or evaluate that checkpoint.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0 "
                                   "(default: $JAX_COORDINATOR_ADDRESS; found by itself on TPU pods and SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])

PREEMPTED_EXIT_STATUS = 143  # 128 + SIGTERM, what schedulers expect of a process stopped by SIGTERM


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # keep orbax/grain chatter out of the progress lines
  from xvit_jax import distributed, train  # imports JAX; after flag parsing so --help stays fast
  try:
    joined = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if joined and train.jax.process_index() == 0:
      print(f"multi-host: {joined}", flush=True)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, mode=_MODE.value)
  except UserError as e:
    cli.fail(e)  # one line, exit 2; silences abandoned background work for the rest of the process
  except train.Preempted as e:
    print(e, flush=True)
    sys.exit(PREEMPTED_EXIT_STATUS)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)  # a bad config file or --config.FIELD: one line, exit 2
