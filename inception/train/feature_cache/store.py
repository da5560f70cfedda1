"""The feature cache on disk: `<dir>/<split>.npy` and its `<split>.json` sidecar.

The .npy is an ordinary .npy file (rows in manifest order; float32 or float16, or bfloat16
stored as its uint16 bit patterns: .npy has no bfloat16 type). It is written to a temporary
file next to it as the rows arrive (`NpyWriter`), its sha256 computed from the same bytes, then
fsync'ed and renamed into place (`paths.atomic_write`); the sidecar (the sha256, shape, storage
dtype, split and key ingredients) is written last, the same way. Reading verifies the sha256 in
1 MiB reads and memory-maps the file read-only (`Mapped`); a missing sidecar, a hash, shape or
dtype mismatch or an unreadable file is reported, and the caller recomputes.

Memory: nothing holds a whole split. Each batch gathers only its own rows and converts them to
float32. Pages of a mapping count towards the process's resident set once touched, so every
`RELEASE_BYTES` of rows served the mapping's pages are dropped (`madvise(MADV_DONTNEED)`; they
stay in the OS page cache, so re-reading them costs no disk I/O while memory allows).
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import pathlib
from collections.abc import Callable, Iterable
from typing import Any

import ml_dtypes
import numpy as np

from inception import checks
from inception import paths

# train.feature_cache_dtype -> the .npy's dtype on disk.
STORAGE_DTYPES = {'float32': np.dtype(np.float32), 'float16': np.dtype(np.float16),
                  'bfloat16': np.dtype(np.uint16)}
# Bytes of rows served from one mapping between drops of its resident pages: bounds the
# resident set a mapping adds.
RELEASE_BYTES = 64 * 2**20
# What reading a damaged or foreign cache file raises.
UNREADABLE = (OSError, ValueError, KeyError, TypeError)


def storage_dtype(train: Any) -> str:
  """`train.feature_cache_dtype` of a config's train section ('float32' when absent: runs
  recorded before the key existed)."""
  return train.get('feature_cache_dtype', 'float32')


def encode(rows: np.ndarray, storage: str) -> np.ndarray:
  """Features (float32 or bfloat16 [n, ...]) -> their on-disk form (`STORAGE_DTYPES[storage]`).

  Raises:
    ValueError: float16 storage overflows (|feature| > 65504) where the feature is finite.
  """
  if storage == 'bfloat16':
    return rows.astype(ml_dtypes.bfloat16).view(np.uint16)  # Rounds to nearest even.
  rows = rows.astype(np.float32, copy=False)  # bfloat16 (model.dtype) -> float32 is exact.
  with np.errstate(over='ignore'):  # Reported below, naming the key.
    out = rows.astype(STORAGE_DTYPES[storage], copy=False)
  if storage == 'float16' and not np.array_equal(np.isfinite(out), np.isfinite(rows)):
    raise ValueError(f"config.train.feature_cache_dtype='float16' overflows: features reach "
                     f"{float(np.nanmax(np.abs(rows))):.4g} > 65504; use 'bfloat16' or "
                     f"'float32'.")
  return out


def decode(rows: np.ndarray, storage: str) -> np.ndarray:
  """On-disk rows -> float32. rows: a copy of the file's rows (e.g. fancy-indexed from the
  mapping), returned as it is when already float32."""
  if storage == 'bfloat16':
    rows = rows.view(ml_dtypes.bfloat16)
  return rows.astype(np.float32, copy=False)


class Mapped:
  """A verified cache file, memory-mapped read-only: float32 copies of rows, on demand."""

  def __init__(self, array: np.ndarray, storage: str, release_bytes: int = RELEASE_BYTES):
    self.array, self.storage = array, storage  # array: the .npy's memmap [N, ...]
    self.release_bytes, self._served = release_bytes, 0

  def rows(self, idx: np.ndarray) -> np.ndarray:
    """float32 [len(idx), ...] of the rows `idx` (int [n], in range)."""
    out = decode(self.array[idx], self.storage)  # Fancy indexing: a copy of just these rows.
    self._served += out.nbytes
    if self._served >= self.release_bytes:
      self.release()
    return out

  def release(self) -> None:
    """Drops the mapping's resident pages (the file's data stays in the OS page cache)."""
    self._served = 0
    mm = self.array.base
    if isinstance(mm, mmap.mmap) and hasattr(mm, 'madvise') and len(mm):
      mm.madvise(mmap.MADV_DONTNEED)


class NpyWriter:
  """Writes an .npy [count, ...] to an open file as row blocks arrive, hashing the same bytes.

  The header (`np.lib.format` version 1.0, as np.save writes it) goes out with the first
  block, when the row shape is known; the file is then byte-identical to `np.save` of the
  whole array.
  """

  def __init__(self, f: io.BufferedWriter, count: int, storage: str):
    self.f, self.count, self.storage = f, count, storage
    self.rows, self.shape, self.sha = 0, None, hashlib.sha256()

  def _put(self, blob: bytes | np.ndarray) -> None:
    self.f.write(blob)
    self.sha.update(blob)

  def _header(self, row_shape: tuple[int, ...]) -> None:
    self.shape = (self.count,) + tuple(row_shape)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {
        'descr': np.lib.format.dtype_to_descr(STORAGE_DTYPES[self.storage]),
        'fortran_order': False, 'shape': self.shape})
    self._put(buf.getvalue())

  def add(self, rows: np.ndarray) -> None:
    """Appends rows already `encode`d ([n, ...], in order)."""
    if self.shape is None:
      self._header(rows.shape[1:])
    elif rows.shape[1:] != self.shape[1:]:
      raise RuntimeError(f'Feature cache: rows {rows.shape[1:]} after {self.shape[1:]}')
    if self.rows + len(rows) > self.count:
      raise RuntimeError(f'Feature cache: more than {self.count} rows')
    self._put(np.ascontiguousarray(rows).reshape(-1).view(np.uint8))  # No copy.
    self.rows += len(rows)

  def finish(self) -> tuple[str, tuple[int, ...]]:
    """(sha256 hex of the file, its shape); RuntimeError unless every row came."""
    if self.shape is None:  # No rows at all (an empty split).
      self._header(())
    if self.rows != self.count:
      raise RuntimeError(f'Feature cache: got {self.rows} features for {self.count} examples')
    return self.sha.hexdigest(), self.shape


class Store:
  """One key's folder of cached splits, stored as `storage` ('float32' | 'float16' |
  'bfloat16'). `files_written` counts the .npy files this instance wrote."""

  def __init__(self, directory: str | os.PathLike, storage: str):
    paths.require_local(directory, 'The feature cache directory', 'features are memory-mapped')
    checks.choice('train.feature_cache_dtype', storage, tuple(STORAGE_DTYPES))
    self.dir, self.storage = pathlib.Path(directory), storage
    self.files_written = 0

  def paths(self, split: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(the .npy, its sidecar) of `split`."""
    return self.dir / f'{split}.npy', self.dir / f'{split}.json'

  def load(self, split: str, count: int, log: Callable[[str], None]) -> Mapped | None:
    """The verified disk copy, mapped; None if there is none, or (after a warning) if it is
    corrupt, incomplete or does not fit."""
    npy, side = self.paths(split)
    if not npy.exists() and not side.exists():
      return None
    try:
      mapped = self.open(split, count, verify=True)
    except UNREADABLE as e:
      log(f'WARNING: feature cache {npy} is corrupt or incomplete ({e}); recomputing.')
      return None
    log(f'Feature cache: loaded {split} features {mapped.array.shape} ({self.storage}) '
        f'from {npy}')
    return mapped

  def open(self, split: str, count: int, verify: bool) -> Mapped:
    """Maps the disk copy after checking it against the sidecar and `count`.

    verify: also the whole file's sha256 (streamed in 1 MiB reads); skipped right after this
    run wrote it. Raises one of `UNREADABLE` saying what does not fit.
    """
    npy, side = self.paths(split)
    meta = json.loads(side.read_text())
    if verify and paths.file_digest(npy) != meta['sha256']:
      raise ValueError('sha256 differs from the sidecar')
    feats = np.load(npy, mmap_mode='r', allow_pickle=False)
    if feats.shape[0] != count or list(feats.shape) != meta['shape']:
      raise ValueError(f'shape {feats.shape} does not fit {count} examples / {meta["shape"]}')
    if meta['dtype'] != self.storage or feats.dtype != STORAGE_DTYPES[self.storage]:
      raise ValueError(f'dtype {meta["dtype"]} ({feats.dtype}) is not {self.storage}')
    return Mapped(feats, self.storage)

  def write(self, split: str, count: int, blocks: Iterable[np.ndarray], ingredients: dict,
            log: Callable[[str], None]) -> None:
    """Streams `blocks` (encoded rows [n, ...], in order) to a temporary file, renamed to the
    .npy when all `count` rows came, then writes the sidecar. RuntimeError (and no file) when
    rows are missing."""
    npy, side = self.paths(split)
    paths.remove_orphaned_temporaries(self.dir, log)
    with paths.atomic_write(npy) as f:
      writer = NpyWriter(f, count, self.storage)
      for rows in blocks:
        writer.add(rows)
      sha, shape = writer.finish()
    self.files_written += 1
    meta = {'sha256': sha, 'shape': list(shape), 'dtype': self.storage, 'split': split,
            'ingredients': ingredients}
    with paths.atomic_write(side) as f:
      f.write(json.dumps(meta, indent=1).encode())
