"""Where the images come from: Animals-10, any class-folder tree, synthetic data, TFDS.

A `Source` is a class-folder tree on disk (`root/<folder>/*`), the (class name, folder) pairs
in label order and a description; `data.dataset.resolve_source(config_data)` picks one.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable


# Animals-10 folder names (Italian, as Kaggle ships them) -> English, as the data set's
# translate.py maps them.
ITALIAN_TO_ENGLISH = {
    'cane': 'dog', 'cavallo': 'horse', 'elefante': 'elephant', 'farfalla': 'butterfly',
    'gallina': 'chicken', 'gatto': 'cat', 'mucca': 'cow', 'pecora': 'sheep',
    'ragno': 'spider', 'scoiattolo': 'squirrel',
}
ENGLISH_TO_ITALIAN = {v: k for k, v in ITALIAN_TO_ENGLISH.items()}
ANIMALS10_ENGLISH = tuple(sorted(ENGLISH_TO_ITALIAN))
KAGGLE_HANDLE = 'alessiocorrado99/animals10'
HOW_TO_GET_ANIMALS10 = (
    'Animals-10 was not found. Get it from https://www.kaggle.com/datasets/alessiocorrado99/'
    'animals10 (unzip it; it holds raw-img/<italian class>/*), then either set '
    'data.path=/path/to/animals10 (the folder holding raw-img/) or export '
    'ANIMALS10_DIR=/path/to/animals10; or `pip install "inception-flax[kaggle]"` with Kaggle '
    'credentials so that kagglehub downloads it.')


@dataclasses.dataclass(frozen=True)
class Source:
  """A class-folder tree to restructure.

  kind: 'animals10' | 'folder' | 'synthetic' | 'tfds'; root: folder holding the class
  folders; classes: (class name, folder name) in label order; description: one line.
  """
  kind: str
  root: pathlib.Path
  classes: tuple[tuple[str, str], ...]
  description: str
  is_synthetic: bool = False


def to_english(name: str) -> str:
  """Animals-10 class name (English or Italian, any case) -> English; ValueError if neither."""
  key = name.strip().lower()
  if key in ENGLISH_TO_ITALIAN:
    return key
  if key in ITALIAN_TO_ENGLISH:
    return ITALIAN_TO_ENGLISH[key]
  raise ValueError(f'{name!r} is not an Animals-10 class; valid (English or Italian): '
                   + ', '.join(f'{e}/{ENGLISH_TO_ITALIAN[e]}' for e in ANIMALS10_ENGLISH))


def find_raw_img(path: str | os.PathLike) -> pathlib.Path | None:
  """`path` itself or `path/raw-img` when it holds Animals-10 class folders, else None."""
  p = pathlib.Path(path).expanduser()
  for cand in (p / 'raw-img', p):
    if cand.is_dir() and any((cand / it).is_dir() for it in ITALIAN_TO_ENGLISH):
      return cand
  return None


def _kagglehub_cache() -> pathlib.Path | None:
  base = pathlib.Path(os.environ.get('KAGGLEHUB_CACHE', '~/.cache/kagglehub')).expanduser()
  versions = base / 'datasets' / KAGGLE_HANDLE / 'versions'
  if not versions.is_dir():
    return None
  # Newest version first (names are integers).
  for v in sorted(versions.iterdir(), key=lambda d: (d.name.isdigit(), d.name.zfill(9)),
                  reverse=True):
    found = find_raw_img(v)
    if found:
      return found
  return None


def _kagglehub_download(log: Callable[[str], None]) -> pathlib.Path | None:
  try:
    import kagglehub  # Optional extra 'kaggle'.
  except ImportError:
    return None
  try:
    log(f'Downloading Animals-10 with kagglehub ({KAGGLE_HANDLE}) ...')
    return find_raw_img(kagglehub.dataset_download(KAGGLE_HANDLE))
  except Exception as e:  # Offline, no credentials, ...: fall through to the next option.
    log(f'kagglehub download failed: {type(e).__name__}: {e}')
    return None


def find_animals10(path: str = '', *, download: bool = True,
                   log: Callable[[str], None] = print) -> tuple[pathlib.Path | None, str]:
  """The `raw-img` folder and where it was found, trying in order: `path`, $ANIMALS10_DIR,
  the kagglehub cache, a kagglehub download. (None, '') when none; a given path or
  $ANIMALS10_DIR that holds no Animals-10 is a FileNotFoundError, never skipped."""
  for value, what in ((path, 'data.path'), (os.environ.get('ANIMALS10_DIR', ''),
                                            '$ANIMALS10_DIR')):
    if value:
      found = find_raw_img(value)
      if not found:
        raise FileNotFoundError(
            f'{what}={value!r} holds no Animals-10 (expected raw-img/<italian class>/ with '
            f'folders such as cane/, cavallo/). {HOW_TO_GET_ANIMALS10}')
      return found, what
  found = _kagglehub_cache()
  if found:
    return found, 'kagglehub cache'
  if download:
    found = _kagglehub_download(log)
    if found:
      return found, 'kagglehub download'
  return None, ''


def animals10_source(raw_img: pathlib.Path, classes, where: str, kind='animals10') -> Source:
  pairs = []
  for name in classes:
    english = to_english(name)
    folder = ENGLISH_TO_ITALIAN[english]
    if not (raw_img / folder).is_dir():
      have = sorted(d.name for d in raw_img.iterdir() if d.is_dir())
      raise FileNotFoundError(f'Animals-10 at {raw_img} has no folder {folder}/ for class '
                              f'{name!r}; it has: {", ".join(have)}')
    pairs.append((english, folder))
  return Source(kind, raw_img.resolve(), tuple(pairs),
                f'Animals-10 ({", ".join(c for c, _ in pairs)}) from {raw_img} ({where})')


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
      english = to_english(name)
    except ValueError:
      english = None
    alt = [f for f in (english, english and ENGLISH_TO_ITALIAN[english]) if f and f in have]
    if not alt:
      raise FileNotFoundError(f'{root} has no class folder {name!r} (data.classes); it has: '
                              f'{", ".join(have) or "no sub-folders"}')
    pairs.append((english, alt[0]))
  if len(pairs) < 2:
    raise ValueError(f'{root} (data.path) needs at least two class folders, found {have}')
  return Source('folder', root.resolve(), tuple(pairs),
                f'class folders {", ".join(f for _, f in pairs)} under {root}')


def synthetic_banner(description: str) -> str:
  line = '!' * 78
  return '\n'.join([
      line,
      '!!! SYNTHETIC DATA: this run does NOT use Animals-10 or any real photos.',
      f'!!! {description}',
      '!!! Set data.path or $ANIMALS10_DIR to train on the real data set.',
      line])
