"""What the command lines share: config flags, and mistakes printed as one line with exit status 2."""

import difflib
import os
import re
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_dict, config_flags
from ml_collections.config_flags import config_flags as config_flags_lib

from xvit_jax.errors import UserError


def run(main):
  """absl.app.run(main), printing a UserError as one line on stderr with exit status 2."""
  def guarded(argv):
    drop_closed_loop_callbacks()
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    try:
      main()
    except UserError as e:
      fail(e)
  app.run(guarded, flags_parser=parse_flags)


def drop_closed_loop_callbacks():
  """Stops tensorstore's late callbacks from printing tracebacks. When an orbax read fails (a damaged
  checkpoint), orbax closes its event loop while other reads are still in flight; each of those, on
  finishing, calls the closed loop's call_soon_threadsafe from a C++ thread, and Python prints the
  RuntimeError through sys.unraisablehook: pages of 'Event loop is closed' before the one-line error
  (fail() quiets what comes after it). Nothing else is hidden: every other unraisable exception goes to
  the hook there was. Every command line calls this first."""
  previous = sys.unraisablehook

  def hook(args):
    if not (isinstance(args.exc_value, RuntimeError) and str(args.exc_value) == "Event loop is closed"):
      previous(args)
  sys.unraisablehook = hook


def parse_flags(argv):
  """absl's flag parsing (app.run's flags_parser), where a config file that cannot be read, or a
  --config.FIELD override of a field the config does not have, ends in one line and exit status 2 (not
  in ml_collections' traceback, raised while the flags are parsed, before main runs), as does an override
  whose value its field's type cannot hold (--config.batch_size=abc)."""
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError, OSError):  # ml_collections applying an override, before FLAGS holds it
    _check_config_flags(argv, overrides=True)
    raise
  except flags.Error as e:
    if isinstance(e, flags.IllegalFlagValueError) and re.match(r"flag --?[\w-]+\.", str(e)):  # --config.FIELD=
      fail(UserError(str(e).splitlines()[0]))
    # the other flags' mistakes as absl.app.parse_flags_with_usage ends them (it cannot parse them again)
    sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)
  _check_config_flags(argv, overrides=False)
  return rest


def _check_config_flags(argv, *, overrides):
  try:
    for name in [n for n in flags.FLAGS if isinstance(flags.FLAGS[n].parser, config_flags_lib.ConfigFileFlagParser)]:
      _check_config_flag(name, argv, overrides)
  except UserError as e:
    fail(e)


def _check_config_flag(name, argv, overrides):
  """UserError if --`name` names no file, or (overrides) a --`name`.FIELD override is not in its config."""
  value, fields = None, []
  for i, arg in enumerate(argv):
    if match := re.fullmatch(rf"--?{re.escape(name)}(?:=(.*))?", arg):
      value = match.group(1) if match.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else None)
    elif match := re.match(rf"--?(?:no)?{re.escape(name)}\.([^=]+)", arg):
      fields.append((arg, match.group(1)))
  if value is None:
    return
  path = value.split(":", 1)[0]
  if not os.path.isfile(path):
    raise UserError(f"--{name}={value}: there is no config file {os.path.abspath(path)}")
  if not overrides or not fields:
    return
  config = config_flags_lib.ConfigFileFlagParser(name, lock_config=False).parse(value)
  for arg, field in fields:
    node, known = config, ""
    for part in field.split("."):
      if not isinstance(node, config_dict.ConfigDict) or part not in node:
        names = list(node.keys()) if isinstance(node, config_dict.ConfigDict) else []
        nearest = difflib.get_close_matches(part, names, n=3, cutoff=0.0)
        hint = f"; nearest: {', '.join(f"{name}.{known}{n}" for n in nearest)}" if nearest else ""
        raise UserError(f"{arg}: {path} has no field {name}.{known}{part}{hint}")
      node, known = node[part], f"{known}{part}."


def fail(error):
  """Ends the process on a UserError: its one line on stderr, exit status 2.

  Only a command line, which owns the process, may do this: the process is ending, and background work
  that libraries abandoned (orbax's checkpoint threads after a failed write, tensorstore callbacks on a
  closed event loop) would print the same failure again as pages of tracebacks while it exits, so their
  logging and exception hooks are silenced for the rest of the process."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  logging.set_verbosity(logging.FATAL)
  sys.excepthook = sys.unraisablehook = threading.excepthook = lambda *_: None
  devnull = os.open(os.devnull, os.O_WRONLY)  # what the interpreter's own shutdown prints, past the hooks
  os.dup2(devnull, sys.stderr.fileno())
  sys.exit(2)


def define_flags(*, config, checkpoint, output):
  """--config, --checkpoint and --output (all required) with the given help texts; their FlagHolders."""
  holders = (config_flags.DEFINE_config_file("config", None, config),
             flags.DEFINE_string("checkpoint", None, checkpoint), flags.DEFINE_string("output", None, output))
  flags.mark_flags_as_required(["config", "checkpoint", "output"])
  return holders
