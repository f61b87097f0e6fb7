"""One convention for every command line: exit codes, usage errors in one line, config checks.

| exit | meaning                                                                           |
|------|-----------------------------------------------------------------------------------|
| 0    | done (or `--help`)                                                                |
| 1    | an error while running; one `error:` line says what and what to do                |
| 2    | a usage error: a bad or missing flag, an unknown config key, a wrong folder       |
| 75   | stopped before the end to be continued (preemption, `steps_per_run`): rerun the   |
|      | same command (EX_TEMPFAIL of sysexits.h; SLURM `--requeue`, k8s restart policies)  |

`run(main)` replaces `absl.app.run(main)`: absl prints help and exits 1, and exits 1 on a bad
flag with its own banner; here help exits 0 and a usage error prints one `error:` line and
exits 2. `--config=FILE:ARG` and its `--config.a.b=value` overrides are checked before the
program starts, so a missing file or a misspelt key is named with close matches instead of
a traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from collections.abc import Callable
from collections.abc import Sequence

import ml_collections
from absl import app
from absl import flags
from absl import logging

from data_pipelines import tensorflow_quiet

OK, ERROR, USAGE, RESUBMIT = 0, 1, 2, 75

_HELP = ("--help", "-help", "--helpshort", "--helpfull", "-h", "-?", "--helpxml")


def quiet_start() -> None:
  """What a command's main() does first: TensorFlow loaded without its banner (before anything
  imports it) and absl logging at WARNING unless --verbosity is given (results and failures
  are printed, not logged). JAX and the modules that import it come after."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  tensorflow_quiet.load()
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


class UsageError(Exception):
  """The command was called wrongly; the message names the fix. Exit status 2."""


def fail(message: str, status: int = ERROR) -> int:
  """Prints one `error:` line to stderr and returns `status` (for `return fail(...)`)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  return status


def _dotted_keys(node, prefix: str = "") -> list[str]:
  out = []
  for key in node.keys():
    path = f"{prefix}{key}"
    out.append(path)
    value = node[key]
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out += _dotted_keys(value, path + ".")
  return out


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of `--config=FILE[:ARG]`, with usage errors for what can go wrong."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"--config={spec}: no config file {path!r} (e.g. "
                     "--config=configs/pretrain.py:size=tiny, from the repository root)")
  module_spec = importlib.util.spec_from_file_location("_cli_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)
  except (ValueError, KeyError, TypeError) as e:
    raise UsageError(f"--config={spec}: {e}") from None


def check_config_flags(argv: Sequence[str], flag: str = "config") -> None:
  """Checks `--config=FILE[:ARG]` and every `--config.a.b=value` key in `argv`.

  Raises:
    UsageError: no such file, a bad `:ARG`, or an override key the config lacks (with the
      closest keys).
  """
  spec, keys = None, []
  for a in argv[1:]:
    name, _, value = a.lstrip("-").partition("=")
    if name == flag:
      spec = value
    elif name.startswith(flag + "."):
      keys.append(name[len(flag) + 1:])
  if spec is None:
    return
  config = load_config_file(spec)
  known = _dotted_keys(config)
  for key in keys:
    if key in known:
      continue
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    section = key.rpartition(".")[0]
    siblings = [k for k in known if k.rpartition(".")[0] == section]
    hint = (f"; did you mean {', '.join(close)}?" if close else
            f"; keys under {section}: {', '.join(siblings)}" if section in known else "")
    raise UsageError(f"--{flag}.{key}: the config has no key {key!r}{hint}")


def _parse(argv: list[str], config_flag: str | None) -> list[str]:
  if config_flag and not any(a.split("=")[0] in _HELP for a in argv[1:]):
    try:  # before absl parses: it would load the config and fail with a traceback
      check_config_flags(argv, config_flag)
    except UsageError as e:
      sys.exit(fail(str(e), USAGE))
  try:
    rest = flags.FLAGS(argv)
  except SystemExit:
    if any(a.split("=")[0] in _HELP for a in argv[1:]):
      sys.exit(OK)
    raise
  except flags.Error as e:
    sys.exit(fail(f"{e} (--help lists the flags)", USAGE))
  return rest


def run(main: Callable[[list[str]], int | None], *, config_flag: str | None = None) -> None:
  """`absl.app.run` with the convention above; `main` returns the exit status (None: 0).

  Args:
    main: the program; a `UsageError` it raises exits 2 with its message.
    config_flag: the name of a `config_flags` flag to check before `main` runs.
  """

  def wrapped(argv):
    if len(argv) > 1:
      sys.exit(fail(f"unexpected arguments {argv[1:]} (flags are --name=value)", USAGE))
    try:
      status = main(argv)
    except UsageError as e:
      status = fail(str(e), USAGE)
    except app.UsageError as e:
      status = fail(str(e), USAGE)
    sys.exit(OK if status is None else int(status))

  app.run(wrapped, flags_parser=lambda argv: _parse(argv, config_flag))
