"""The project's cache directory (restructured subsets, synthetic data, validation results)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
from typing import Any, Iterator


def cache_dir() -> pathlib.Path:
  """$INCEPTION_FLAX_CACHE, else $XDG_CACHE_HOME/inception-flax, else ~/.cache/inception-flax.

  Raises:
    ValueError: $INCEPTION_FLAX_CACHE is a URI (gs://...): the cache must be local (file
      locks, memory-mapped features, image folders read in place).
  """
  if os.environ.get('INCEPTION_FLAX_CACHE'):
    if '://' in os.environ['INCEPTION_FLAX_CACHE']:
      raise ValueError(f'$INCEPTION_FLAX_CACHE={os.environ["INCEPTION_FLAX_CACHE"]} is a URI, '
                       'but the cache must be a local folder (file locks, memory-mapped '
                       'features, image folders read in place); point it at a local disk '
                       '(only the workdir may be a URI)')
    return pathlib.Path(os.environ['INCEPTION_FLAX_CACHE']).expanduser()
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'inception-flax'


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike) -> Iterator[None]:
  """Holds an exclusive lock (`<parent>/.<name>.lock`, fcntl.flock, blocking) while `folder`
  is written, so that processes preparing the same data (a sweep's runners, a job's
  processes) wait for the first one and then find its result. Released when the process dies."""
  folder = pathlib.Path(folder)
  folder.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(folder.parent / f'.{folder.name}.lock', os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # Closing the descriptor releases the lock.


def args_hash(args: Any, length: int = 16) -> str:
  """Stable short hash of JSON-able `args` (key order does not matter)."""
  blob = json.dumps(args, sort_keys=True, separators=(',', ':'), default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:length]
