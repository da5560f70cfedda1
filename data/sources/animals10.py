"""Kaggle Animals-10: its class names (Italian folders, English names), where to find it
($ANIMALS10_DIR, data.path, the kagglehub cache or a kagglehub download) and its `Source`."""

from __future__ import annotations

import os
import pathlib
from typing import Callable

from data.sources import Source

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
                              f'{name!r}; it has: {", ".join(have)}. Point data.path (or '
                              f'$ANIMALS10_DIR) at a complete Animals-10, or set data.classes '
                              f'to classes it has')
    pairs.append((english, folder))
  return Source(kind, raw_img.resolve(), tuple(pairs),
                f'Animals-10 ({", ".join(c for c, _ in pairs)}) from {raw_img} ({where})')
