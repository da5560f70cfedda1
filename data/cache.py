"""The project's cache directory (restructured subsets, synthetic data, validation results)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any


def cache_dir() -> pathlib.Path:
  """$INCEPTION_FLAX_CACHE, else $XDG_CACHE_HOME/inception-flax, else ~/.cache/inception-flax."""
  if os.environ.get('INCEPTION_FLAX_CACHE'):
    return pathlib.Path(os.environ['INCEPTION_FLAX_CACHE']).expanduser()
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'inception-flax'


def args_hash(args: Any, length: int = 16) -> str:
  """Stable short hash of JSON-able `args` (key order does not matter)."""
  blob = json.dumps(args, sort_keys=True, separators=(',', ':'), default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:length]
