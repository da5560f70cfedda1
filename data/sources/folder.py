"""Any class-folder tree `<root>/<class>/*` as a `Source`."""

from __future__ import annotations

import os
import pathlib

from data.sources import Source
from data.sources import animals10


def folder_source(root: str | os.PathLike, classes) -> Source:
  """Any `<root>/<class>/*` tree; `classes` empty = every sub-folder, sorted."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f'data.path={str(root)!r} is not a folder; it must hold one '
                            'sub-folder of images per class')
  have = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith('.'))
  pairs = []
  for name in (classes or have):
    if name in have:
      pairs.append((name, name))
      continue
    try:  # Animals-10 names in either language, when only the translation is a folder.
      english = animals10.to_english(name)
    except ValueError:
      english = None
    alt = [f for f in (english, english and animals10.ENGLISH_TO_ITALIAN[english]) if f and f in have]
    if not alt:
      raise FileNotFoundError(f'{root} has no class folder {name!r} (data.classes); it has: '
                              f'{", ".join(have) or "no sub-folders"}')
    pairs.append((english, alt[0]))
  if len(pairs) < 2:
    raise ValueError(f'{root} (data.path) needs at least two class folders, found {have}')
  return Source('folder', root.resolve(), tuple(pairs),
                f'class folders {", ".join(f for _, f in pairs)} under {root}')
