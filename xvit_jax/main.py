"""Command line: python -m xvit_jax.main --config=configs/demo.py --workdir=DIR [--config.FIELD=VALUE ...]

--mode=config prints the config as training would run it (derived fields filled in: steps, warmup, learning
rates at this batch) as one JSON object and exits; it needs no --workdir and touches no data or device.

Multi-host: run the same command in every process (see xvit_jax/distributed.py for how they find each
other). On SIGTERM (a preemption notice) training saves a checkpoint and exits with status 143; the same
command resumes it.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from xvit_jax.errors import UserError
from xvit_jax.tools import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py), optionally 'file.py:arg'.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard files "
                               "(multi-host: a path every host sees).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "config"],
                          "train (resuming from the workdir's newest checkpoint), evaluate that checkpoint, or "
                          "config: print the resolved config as JSON (no workdir, data or device needed).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0 "
                                   "(default: $JAX_COORDINATOR_ADDRESS; found by itself on TPU pods and SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..num_processes-1.")
flags.mark_flag_as_required("config")
flags.register_multi_flags_validator(["workdir", "mode"], lambda f: f["workdir"] is not None or f["mode"] == "config",
                                     message="--workdir is required (all modes but --mode=config)")

PREEMPTED_EXIT_STATUS = 143  # 128 + SIGTERM, what schedulers expect of a process stopped by SIGTERM


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.drop_closed_loop_callbacks()
  logging.set_verbosity(logging.WARNING)  # keep orbax/grain chatter out of the progress lines
  if _MODE.value == "config":
    return print_config(_CONFIG.value)
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


def print_config(config):
  """The config with its derived fields filled in (optim.resolve_schedule) as one JSON object on stdout,
  checked as far as no device is needed: a -1 mesh axis stays -1 (the devices resolve it at start)."""
  from xvit_jax import config_lib, optim  # imports JAX, but starts no backend
  try:
    config_lib.check(config, num_devices=None)
    print(json.dumps(optim.resolve_schedule(config)[0].to_dict(), indent=2), flush=True)
  except UserError as e:
    cli.fail(e)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)  # a bad config file or --config.FIELD: one line, exit 2
