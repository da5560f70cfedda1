"""Lazy re-exports for a package's `__init__`: each name is imported from its module on first
use, so importing the package (or one of its light modules) loads nothing heavy.

    _EXPORTS = {'prepare': 'data.dataset'}
    __all__ = list(_EXPORTS)
    __getattr__, __dir__ = lazy.exports(__name__, _EXPORTS, globals())

Part of the bottom layer (imports nothing of the project): `data` uses it too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def exports(package: str, names: Mapping[str, str], namespace: dict
            ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
  """(`__getattr__`, `__dir__`) for `package`, serving `names` ({name: module that defines
  it}) next to the package's own `namespace` (its globals())."""

  def getattr_(name: str) -> object:
    if name in names:
      return getattr(importlib.import_module(names[name]), name)
    raise AttributeError(f'module {package!r} has no attribute {name!r}')

  def dir_() -> list[str]:
    return sorted(list(namespace) + list(names))

  return getattr_, dir_
