"""train.py's process plumbing: a quiet start of the libraries, each process's log function,
and the exit status of every outcome (`exit_codes`, also tabled in README.md).

Loads nothing heavy when imported: train.py uses it before TensorFlow and JAX are loaded.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any, Callable

VERBOSE_ENV = 'INCEPTION_FLAX_VERBOSE'


class InvalidConfig(Exception):
  """A config that fails validation or cannot be loaded."""


class ConfigFlagError(Exception):
  """--config or a --config.<key> override that the flag parser rejected; the message starts
  with those flags in parentheses."""


class UsageError(Exception):
  """Flags that make no run: --config or --workdir missing, bad multi-process flags."""


def exit_codes() -> tuple[tuple[Any, int, str], ...]:
  """(exception class(es), exit status, message prefix) per outcome; the first matching row
  wins and prints prefix + the error to stderr. A finished run exits 0; an error no row names
  propagates (a traceback, exit 1). A function: the trainer loads after the libraries."""
  # pylint: disable=g-import-not-at-top
  from inception.train import actions
  from inception.train import checkpoints
  from inception.train import preemption
  from inception.train import run_record
  # pylint: enable=g-import-not-at-top
  return (
      (actions.NonFiniteLossError, 3, 'ERROR: '),
      (preemption.Preempted, preemption.EXIT_PREEMPTED, 'PREEMPTED: '),  # 128 + SIGTERM
      ((InvalidConfig, run_record.ConfigMismatchError), 2, 'Invalid config: '),
      (ConfigFlagError, 2, 'Invalid config '),
      (UsageError, 2, 'ERROR: '),
      ((checkpoints.NoCheckpointError, RuntimeError, FileNotFoundError, PermissionError,
        ValueError), 1, 'ERROR: '),
  )


def report(error: Exception) -> int | None:
  """Prints `error` as its `exit_codes` row says; its exit status (None: no row names it)."""
  for types, status, prefix in exit_codes():
    if isinstance(error, types):
      print(f'{prefix}{error}', file=sys.stderr)
      return status
  return None


def exit_status(run: Callable[[], object]) -> int:
  """0 when `run()` returns, else the exit status of what it raised (see `exit_codes`)."""
  try:
    run()
  except Exception as e:  # pylint: disable=broad-except  # Re-raised unless a row names it.
    status = report(e)
    if status is None:
      raise
    return status
  return 0


@contextlib.contextmanager
def config_errors(config_arg: str | None):
  """What validating a config raises, as InvalidConfig: a ValueError's text; an OSError (the
  config flag raises a config file's load failure on first use) after its --config."""
  try:
    yield
  except ValueError as e:
    raise InvalidConfig(str(e)) from None
  except OSError as e:
    raise InvalidConfig(f'--config={config_arg}: {" ".join(str(e).split())}') from None


def config_flag_error(error: Exception, argv: list[str],
                      default_config: Callable[[], Any]) -> ConfigFlagError:
  """One line for what parsing `argv`'s --config flags raised: for a --config.<path>=...
  override that names no key of `default_config()`, that key and its section's valid keys;
  else the error's text (of a config file's traceback, the flag and the error it raised)."""
  if isinstance(error, (KeyError, AttributeError)):  # ConfigDict's "'key'\nDid you mean ..."
    message = _unknown_key_message(argv, default_config) or str(error).strip()
  else:
    lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
    if any(l.startswith('Traceback') for l in lines):
      lines = lines[:1] + lines[-1:]
    message = ' '.join(lines)
  given = ' '.join(a for a in argv[1:] if a.startswith('--config'))
  return ConfigFlagError(f'({given}): {message}')


def _unknown_key_message(argv: list[str], default_config: Callable[[], Any]) -> str | None:
  import difflib  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0].split('.')
    section = default_config()
    for depth, part in enumerate(path):
      if not isinstance(section, ml_collections.ConfigDict):
        break
      if part not in section:
        keys = sorted(section.keys())
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        return (f'no such key {part!r}{hint}; valid keys in '
                f'{".".join(["config", *path[:depth]])}: {", ".join(keys)}')
      section = section[part]
  return None


def is_verbose(flag: bool) -> bool:
  """Whether to show the libraries' start-up logs: --verbose or INCEPTION_FLAX_VERBOSE=1."""
  return flag or bool(os.environ.get(VERBOSE_ENV))


def is_verbose_in(argv: list[str]) -> bool:
  """`is_verbose` before the flags are parsed (parsing loads the config, which imports the
  libraries): reads --verbose, in any spelling absl accepts, from `argv` alone."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  only = flags.FlagValues()
  flags.DEFINE_bool('verbose', False, '', flag_values=only)
  try:
    only(argv, known_only=True)
  except flags.Error:  # A bad --verbose value: the real parse reports it.
    return is_verbose(False)
  return is_verbose(only.verbose)


@contextlib.contextmanager
def native_logs_held_back(verbose: bool):
  """Holds back what native code writes to stderr while TensorFlow and JAX start (CUDA probes
  on CPU-only machines, CPU-instruction notices): none of it is an error here. Replayed when
  starting fails, or at once with `verbose`."""
  if verbose:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    except Exception:
      os.dup2(saved, 2)
      held.seek(0)
      sys.stderr.write(held.read().decode(errors='replace'))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def import_libraries(verbose: bool) -> None:
  """Imports TensorFlow (via `data`) and JAX, quietly unless `verbose`."""
  if not verbose:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  with native_logs_held_back(verbose):
    import data  # pylint: disable=g-import-not-at-top,unused-import
    import jax  # pylint: disable=g-import-not-at-top,unused-import
    if not verbose:
      # "Unable to initialize backend 'tpu'" and the like: JAX trying platforms this machine
      # does not have.
      import logging  # pylint: disable=g-import-not-at-top
      logging.getLogger('jax._src.xla_bridge').setLevel(logging.ERROR)


def start_jax(verbose: bool, multihost: bool, coordinator_address: str | None,
              num_processes: int | None, process_id: int | None, heartbeat_timeout_s: int):
  """Joins the multi-process job when asked (that must come first), then starts JAX's
  backends, quietly unless `verbose`. A bad multi-process setting raises UsageError."""
  import jax  # pylint: disable=g-import-not-at-top
  distributed = (coordinator_address, num_processes, process_id)
  try:
    if multihost or any(v is not None for v in distributed):
      from inception.train import sharding  # pylint: disable=g-import-not-at-top
      sharding.initialize_multihost(*distributed, heartbeat_timeout_s=heartbeat_timeout_s)
    with native_logs_held_back(verbose):
      jax.devices()
  except (ValueError, TypeError) as e:  # jax.distributed.initialize's "should be defined" etc.
    raise UsageError('multi-process start-up (--coordinator_address, --num_processes, '
                     f'--process_id): {e}') from None


def process_log() -> Callable[[str], None]:
  """print in process 0; elsewhere only warnings, prefixed with the process index (N copies
  of every line would bury them)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    return print
  prefix = f'[process {jax.process_index()}/{jax.process_count()}] '

  def log(line: str) -> None:
    if line.lstrip().startswith(('WARNING', 'ERROR')):
      print(prefix + line)
  return log
