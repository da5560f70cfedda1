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


SPLIT_FOLDERS = ('train', 'validation', 'test')  # The last is optional.


def split_folder_source(root: str | os.PathLike, classes) -> Source:
  """A `<root>/<split>/<class>/*` tree (data.splits='folders'): train/ and validation/
  required, test/ optional. `classes` empty = the sorted union of the split folders' class
  folders; every class must have a folder in train/."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f'data.path={str(root)!r} is not a folder; with data.splits='
                            "'folders' it must hold train/ and validation/ (and optionally "
                            'test/), each with one sub-folder of images per class')
  subdirs = lambda d: sorted(x.name for x in d.iterdir()
                             if x.is_dir() and not x.name.startswith('.'))
  present = tuple(s for s in SPLIT_FOLDERS if (root / s).is_dir())
  missing = [s for s in SPLIT_FOLDERS[:2] if s not in present]
  if missing:
    raise FileNotFoundError(f'{root} (data.path, data.splits=\'folders\') has no '
                            f'{" or ".join(s + "/" for s in missing)} folder; it has: '
                            f'{", ".join(subdirs(root)) or "no sub-folders"}')
  have = {s: subdirs(root / s) for s in present}
  union = sorted(set().union(*have.values()))
  names = tuple(classes) or tuple(union)
  for name in names:
    if name not in have['train']:
      where = [s for s in present if name in have[s]]
      raise FileNotFoundError(
          f'class {name!r} has no folder {root / "train" / name} (data.splits=\'folders\'; '
          f'{"it is only in " + ", ".join(where) if where else "no split has it"}): every '
          f'class needs training images; train/ has: {", ".join(have["train"]) or "nothing"}')
  if len(names) < 2:
    raise ValueError(f'{root / "train"} (data.path) needs at least two class folders, found '
                     f'{have["train"]}')
  return Source('folder', root.resolve(), tuple((n, n) for n in names),
                f'split folders {", ".join(present)} of classes {", ".join(names)} under {root}',
                split_folders=present)
