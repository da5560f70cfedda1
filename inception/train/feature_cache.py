"""Feature caching: with a frozen backbone and no augmentation, run the backbone once per split.

When every backbone param is frozen (`optimizer.param_rules` multiplier 0), no backbone
BatchNorm trains (`model.batchnorm_train_blocks` empty) and augmentation is the identity, the
backbone maps each image to the same cut-layer features in every epoch. `FeatureCache`
computes them once per split (jitted backbone forward, batches sharded like the eval step, in
manifest order), streams them to disk and serves training batches, read back from the file,
in exactly the order of `data.pipeline.train_batches` (its per-(seed, epoch) permutation) and
padded eval batches like `data.pipeline.eval_batches`. The head then trains on them with the
same jitted step (`transfer.HeadOnly` in `steps.make_train_step`): same masked optimizer,
dropout keys and full-params train state, so checkpoints are the same as without the cache.

What is cached: the cut layer's features [N, h, w, C]; for a 'gap' head (`model.head`) the
globally average-pooled features [N, C] instead (`transfer.BackboneOnly(pooled=True)`, the
same mean the head would take), h * w times smaller. Stored as `train.feature_cache_dtype`
('float32' by default, bit-identical to the uncached features; 'float16' or 'bfloat16' halve
the file and round the features; 'bfloat16' is lossless with `model.dtype='bfloat16'`) and
always served as float32 batches.

On disk: `<cache>/features/<key>/<split>.npy`, an ordinary .npy file (rows in manifest order;
float32 or float16, or bfloat16 stored as its uint16 bit patterns) and a `<split>.json`
sidecar (the .npy's sha256, shape, storage dtype, split and key ingredients). The .npy is
written to a temporary file next to it as the batches come out of the backbone, its sha256
computed from the same bytes, then fsync'ed and renamed into place (os.replace); the sidecar
is written last, the same way. key = sha256 of `key_ingredients` (backbone weights provenance
and content hash, cut, image size, resize method, preprocessing, model dtype, pooling, storage
dtype, the manifest's sha256 -- which lists every file in order with its own sha256). A missing
sidecar, a hash, shape or dtype mismatch or an unreadable file is reported and recomputed.

Memory: nothing holds a whole split. Computing keeps one (global) batch of features on the
host; loading verifies the sha256 in 1 MiB reads and memory-maps the file read-only
(`np.load(mmap_mode='r')`); each batch gathers only its own rows (this process's share of the
global batch) and converts them to float32. Pages of a mapping count towards the process's
resident set once touched, so every `RELEASE_BYTES` of rows served the mapping's pages are
dropped (`madvise(MADV_DONTNEED)`; they stay in the OS page cache, so re-reading them costs no
disk I/O while memory allows). `_memory` keeps the verified open mappings of recent splits (not
their contents), so evaluating every epoch does not re-hash the file.

Several processes (`jax.distributed`; the cache directory must be on a filesystem every
process sees): each process verifies its view of the file, then they agree (an all-gather of
the flags) to load only if every one found a valid copy, else all compute -- computing is a
collective (the jitted backbone over globally sharded batches). While computing, each batch's
features are all-gathered (that batch only) and process 0 alone writes the file and its
sidecar; `multihost_utils.sync_global_devices` then holds every process until both are in
place, and each memory-maps the file (checked against the sidecar, not re-hashed). A hit in
`_memory` takes part in the agreement too, so processes whose memories differ still take the
same branch.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import mmap
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from data import cache as data_cache
from data import pipeline
from inception import checks
from inception import paths
from inception.train import param_rules
from inception.train import sharding
from inception.models import transfer
from inception import weights
from inception.train import xla_options

MODES = ('auto', 'on', 'off')
# train.feature_cache_dtype -> the .npy's dtype on disk (bfloat16 as its bit patterns: .npy
# has no bfloat16 type).
STORAGE_DTYPES = {'float32': np.dtype(np.float32), 'float16': np.dtype(np.float16),
                  'bfloat16': np.dtype(np.uint16)}
FORMAT_VERSION = 3  # Bump when the features a key names change (e.g. the backbone's code).
MAX_OPEN = 16  # Open mappings kept in `_memory` (oldest dropped first); they hold no RAM.
# Bytes of rows served from one mapping between drops of its resident pages: bounds the
# resident set a mapping adds (see the module doc).
RELEASE_BYTES = 64 * 2**20
# Where the disk cache lives; None = <cache>/features (data.cache.cache_dir()). Benchmarks point
# it at a fresh folder to time the feature computation.
DIRECTORY: str | os.PathLike | None = None

# Backbone forward batches run by this process (tests assert a warm cache runs none), and the
# .npy files it wrote.
stats = {'forward_batches': 0, 'files_written': 0}
_memory: collections.OrderedDict = collections.OrderedDict()  # (key, split) -> _Mapped


def clear_memory() -> None:
  """Forgets the open mappings (the next use verifies and maps the disk copy again)."""
  _memory.clear()


def storage_dtype(train: Any) -> str:
  """`train.feature_cache_dtype` of a config's train section ('float32' when absent: runs
  recorded before the key existed)."""
  return train.get('feature_cache_dtype', 'float32')


def validate_config(train: Any) -> None:
  """Checks the feature cache's keys of `config.train`, naming the key (ValueError)."""
  checks.choice('train.feature_cache', train.feature_cache, MODES)
  checks.choice('train.feature_cache_dtype', storage_dtype(train), tuple(STORAGE_DTYPES))


def invalid_reason(config: Any, params: Any = None) -> str | None:
  """Why cached features would differ from the uncached path (one line), or None if valid.

  params: the model's param tree (device arrays or shapes); None skips the param_rules check
  (config-only checks, e.g. in configs/validate.py).
  """
  from data import augment  # pylint: disable=g-import-not-at-top
  if tuple(config.model.batchnorm_train_blocks):
    return (f'model.batchnorm_train_blocks={tuple(config.model.batchnorm_train_blocks)} '
            f'trains backbone BatchNorm statistics (set it to ())')
  if not augment.is_identity(config.data.augment):
    return ('data.augment is on (set data.augment.enabled=False, or every range to 0 and '
            'horizontal_flip=False)')
  if params is not None:
    mults = param_rules.flat_paths(param_rules.multipliers(
        {'backbone': params['backbone']}, config.optimizer.param_rules))
    trained = [p for p, m in mults.items() if m != 0.0]
    if trained:
      return (f'optimizer.param_rules trains {len(trained)} backbone params (e.g. '
              f'{trained[0]}); every backbone param needs multiplier 0.0')
  return None


def decide(config: Any, params: Any, log: Callable[[str], None] = print) -> bool:
  """Whether this run uses the cache, per `config.train.feature_cache`; logs the decision.

  Raises:
    ValueError: feature_cache='on' but the cache is not valid for this config (says why).
  """
  mode = config.train.feature_cache
  if mode not in MODES:
    raise ValueError(f'config.train.feature_cache={mode!r} is not valid; valid: '
                     f'{", ".join(MODES)}')
  if mode == 'off':
    return False
  reason = check_on(config, params)
  if reason is None:
    log(f'Feature cache: on (train.feature_cache={mode!r}; backbone frozen, no augmentation): '
        f'the backbone runs once per split, epochs train the head on cached features.')
    return True
  log(f'Feature cache: not used (train.feature_cache="auto"): {reason}.')
  return False


def check_on(config: Any, params: Any = None) -> str | None:
  """`invalid_reason`; raises ValueError with it when config.train.feature_cache is 'on'."""
  reason = invalid_reason(config, params)
  if reason and config.train.feature_cache == 'on':
    raise ValueError(f'config.train.feature_cache="on" but cached features would change '
                     f'training: {reason}; or use "auto"/"off".')
  return reason


def key_ingredients(config: Any, provenance: dict, manifest_sha256: str,
                    backbone_sha256: str) -> dict:
  """Everything the cached features depend on (JSON-able)."""
  d, m = config.data, config.model
  return {
      'format': FORMAT_VERSION,
      'backbone': m.backbone,
      'weights': {k: provenance.get(k) for k in ('weights', 'sha256', 'variant')},
      'backbone_sha256': backbone_sha256,  # Covers random inits (seed) and checkpoints too.
      'cut': m.cut, 'image_size': int(d.image_size), 'resize_method': d.resize_method,
      'preprocess': d.preprocess, 'dtype': m.dtype, 'manifest_sha256': manifest_sha256,
      'pooled': is_pooled(config), 'storage_dtype': storage_dtype(config.train),
  }


def is_pooled(config: Any) -> bool:
  """Whether the cache holds globally pooled features [N, C] (the 'gap' head pools first)."""
  return config.model.head == 'gap'


def cache_key(ingredients: dict) -> str:
  blob = json.dumps(ingredients, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(blob.encode()).hexdigest()


def make_features_step(model: transfer.TransferModel, mesh: Any = None,
                       compiler_options: dict | None = None, pooled: bool = False
                       ) -> Callable:
  """Jitted `(variables, images [B, H, W, 3]) -> features [B, h, w, C]` (eval-mode backbone);
  [B, C] (global average pool) with `pooled`."""
  backbone = transfer.BackboneOnly(model, pooled=pooled)
  kwargs = {}
  if mesh is not None:
    kwargs = dict(in_shardings=(sharding.replicated(mesh), sharding.data_sharded(mesh)),
                  out_shardings=sharding.data_sharded(mesh))
  options = xla_options.compiler_options() if compiler_options is None else compiler_options
  return jax.jit(backbone.apply, compiler_options=options, **kwargs)


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


# What reading a damaged or foreign cache file raises.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError)


class _Mapped:
  """A verified cache file, memory-mapped read-only: float32 copies of rows, on demand."""

  def __init__(self, array: np.ndarray, storage: str):
    self.array, self.storage = array, storage  # array: the .npy's memmap [N, ...]
    self._served = 0

  def rows(self, idx: np.ndarray) -> np.ndarray:
    """float32 [len(idx), ...] of the rows `idx` (int [n], in range)."""
    out = decode(self.array[idx], self.storage)  # Fancy indexing: a copy of just these rows.
    self._served += out.nbytes
    if self._served >= RELEASE_BYTES:
      self.release()
    return out

  def release(self) -> None:
    """Drops the mapping's resident pages (the file's data stays in the OS page cache)."""
    self._served = 0
    mm = self.array.base
    if isinstance(mm, mmap.mmap) and hasattr(mm, 'madvise') and len(mm):
      mm.madvise(mmap.MADV_DONTNEED)


class _NpyWriter:
  """Writes an .npy [count, ...] to an open file as row blocks arrive, hashing the same bytes.

  The header (`np.lib.format` version 1.0, as np.save writes it) goes out with the first
  block, when the row shape is known; the file is then byte-identical to `np.save` of the
  whole array.
  """

  def __init__(self, f: io.BufferedWriter, count: int, storage: str):
    self.f, self.count, self.storage = f, count, storage
    self.rows, self.shape, self.sha = 0, None, hashlib.sha256()

  def _put(self, data: bytes | np.ndarray) -> None:
    self.f.write(data)
    self.sha.update(data)

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


class FeatureCache:
  """Cut-layer features of one run's splits: computed once, streamed to disk, read back mapped."""

  def __init__(self, config: Any, model: transfer.TransferModel, backbone_variables: dict,
               info: Any, provenance: dict, mesh: Any, *, directory: str | os.PathLike |
               None = None, log: Callable[[str], None] = print):
    """backbone_variables: {'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}."""
    validate_config(config.train)
    self.config, self.model, self.info, self.mesh, self.log = config, model, info, mesh, log
    self.pooled, self.storage = is_pooled(config), storage_dtype(config.train)
    # A host copy, replicated anew: the train step donates (deletes) the state's buffers.
    host = jax.device_get(backbone_variables)
    self.variables = sharding.replicate(host, mesh)
    self.ingredients = key_ingredients(
        config, provenance, info.manifest_sha256,
        weights.content_sha256(traverse_util.flatten_dict(host, sep='/')))
    self.key = cache_key(self.ingredients)
    directory = directory or DIRECTORY
    if directory:
      paths.require_local(directory, 'The feature cache directory', 'features are memory-mapped')
    base = pathlib.Path(directory) if directory else data_cache.cache_dir() / 'features'
    self.dir = base / self.key
    self._step = None

  @classmethod
  def for_setup(cls, config: Any, setup: Any, state: Any, log: Callable[[str], None] = print
                ) -> 'FeatureCache | None':
    """The run's cache when `config.train.feature_cache` and the config allow it, else None.

    setup: `trainer.Setup`; state: the (restored) train state, whose frozen backbone is used.
    """
    if not decide(config, state.params, log):
      return None
    variables = {'params': {'backbone': state.params['backbone']},
                 'batch_stats': {'backbone': state.batch_stats.get('backbone', {})}}
    fc = cls(config, setup.model, variables, setup.info, setup.provenance, setup.mesh, log=log)
    log(f'Feature cache: key {fc.key[:16]} in {fc.dir} ({"pooled" if fc.pooled else "spatial"} '
        f'features, stored as {fc.storage})')
    return fc

  def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, h, w, C], or [N, C] pooled, labels int32 [N]) of `split`, manifest order.

    The features are the file's read-only memory map in its storage dtype (see `decode`);
    `train_batches` / `eval_batches` serve float32 rows from it.
    """
    _, labels = pipeline.split_files(self.info, split)
    return self._mapped(split, len(labels)).array, labels

  def _mapped(self, split: str, count: int) -> _Mapped:
    """The split's verified mapping: from `_memory`, the disk, or computed (all processes)."""
    mapped = _memory.get((self.key, split))
    if mapped is None:
      mapped = self._load(split, count)
    # Every process must take the same branch: computing is a collective.
    if not sharding.all_agree(mapped is not None):
      if mapped is not None:
        self.log(f'Feature cache: another process has no valid copy of {split}; all recompute.')
      self._compute(split, count)
      sharding.barrier(f'feature_cache {self.key[:16]} {split}')  # Process 0's file is in place.
      try:
        mapped = self._open(split, count, verify=False)
      except _UNREADABLE as e:
        raise RuntimeError(f'Feature cache: process {jax.process_index()} cannot read the '
                           f'{split} features process 0 wrote to {self.dir} ({e}); with '
                           f'several processes the cache directory must be on a filesystem '
                           f'all of them share ($INCEPTION_FLAX_CACHE).') from e
    _memory[(self.key, split)] = mapped
    _memory.move_to_end((self.key, split))
    while len(_memory) > MAX_OPEN:
      _memory.popitem(last=False)
    return mapped

  def _paths(self, split: str) -> tuple[pathlib.Path, pathlib.Path]:
    return self.dir / f'{split}.npy', self.dir / f'{split}.json'

  def _load(self, split: str, count: int) -> _Mapped | None:
    """The verified disk copy, mapped; None if there is none, or (after a warning) if it is
    corrupt, incomplete or does not fit."""
    npy, side = self._paths(split)
    if not npy.exists() and not side.exists():
      return None
    try:
      mapped = self._open(split, count, verify=True)
    except _UNREADABLE as e:
      self.log(f'WARNING: feature cache {npy} is corrupt or incomplete ({e}); recomputing.')
      return None
    self.log(f'Feature cache: loaded {split} features {mapped.array.shape} ({self.storage}) '
             f'from {npy}')
    return mapped

  def _open(self, split: str, count: int, verify: bool) -> _Mapped:
    """Maps the disk copy after checking it against the sidecar and `count`.

    verify: also the whole file's sha256 (streamed in 1 MiB reads); skipped right after this
    run wrote it. Raises one of `_UNREADABLE` saying what does not fit.
    """
    npy, side = self._paths(split)
    meta = json.loads(side.read_text())
    if verify and weights.file_digest(npy) != meta['sha256']:
      raise ValueError('sha256 differs from the sidecar')
    feats = np.load(npy, mmap_mode='r', allow_pickle=False)
    if feats.shape[0] != count or list(feats.shape) != meta['shape']:
      raise ValueError(f'shape {feats.shape} does not fit {count} examples / {meta["shape"]}')
    if meta['dtype'] != self.storage or feats.dtype != STORAGE_DTYPES[self.storage]:
      raise ValueError(f'dtype {meta["dtype"]} ({feats.dtype}) is not {self.storage}')
    return _Mapped(feats, self.storage)

  def _compute(self, split: str, count: int) -> None:
    """Backbone forward over `split` in eval batches (manifest order), streamed to the .npy."""
    self.log(f'Feature cache: computing {split} features ({count} images, backbone '
             f'{self.model.cut}{", pooled" if self.pooled else ""}, stored as {self.storage})')
    self._write(split, count, self._forward(split))

  def _forward(self, split: str) -> Iterator[np.ndarray]:
    """`split`'s features, encoded for storage: [n, ...] per global eval batch, its real
    examples in manifest order. Collective: every process runs the forward and receives every
    batch (so a float16 overflow stops all of them at the same batch)."""
    if self._step is None:
      self._step = make_features_step(self.model, self.mesh, pooled=self.pooled)
    batches = pipeline.eval_batches(self.info, self.config.data, split=split,
                                    batch_size=self.config.eval.batch_size,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
    gather = lambda feats, mask: encode(sharding.to_host(feats)[sharding.to_host(mask)],
                                        self.storage)
    pending = None
    for batch in sharding.prefetch_to_device(batches, self.mesh):
      out = (self._step(self.variables, batch['image']), batch['mask'])
      stats['forward_batches'] += 1
      if pending is not None:  # Fetch one batch behind, so the next forward is queued.
        yield gather(*pending)
      pending = out
    if pending is not None:
      yield gather(*pending)

  def _write(self, split: str, count: int, blocks: Iterator[np.ndarray]) -> None:
    """Consumes `blocks` (encoded rows, in order) in every process; process 0 streams them to
    a temporary file, renamed to the .npy when all `count` rows came, then the sidecar."""
    npy, side = self._paths(split)
    writes = jax.process_index() == 0
    if writes:
      paths.remove_orphaned_temporaries(self.dir, self.log)
    with (paths.atomic_write(npy) if writes else contextlib.nullcontext()) as f:
      writer = _NpyWriter(f, count, self.storage) if writes else None
      for rows in blocks:
        if writer is not None:
          writer.add(rows)
      if writer is None:
        return
      sha, shape = writer.finish()  # Raises (and the temporary file goes) if rows are missing.
    stats['files_written'] += 1
    meta = {'sha256': sha, 'shape': list(shape), 'dtype': self.storage, 'split': split,
            'ingredients': self.ingredients}
    with paths.atomic_write(side) as f:
      f.write(json.dumps(meta, indent=1).encode())

  def train_batches(self, *, batch_size: int, seed: int, start_step: int = 0,
                    process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """Infinite {'image': float32 features [B, h, w, C] (or [B, C]), 'label': int32 [B]},
    B = local batch.

    Same examples per (seed, step) as `data.pipeline.train_batches`: its epoch permutation.
    """
    _, labels = pipeline.split_files(self.info, 'train')
    mapped = self._mapped('train', len(labels))
    local = pipeline.local_batch_size(batch_size, process_index, process_count)
    pipeline.steps_per_epoch(self.info, batch_size)
    epochs = pipeline.epoch_indices(len(labels), batch_size, local, process_index, int(seed),
                                     int(start_step))
    for idx, _, _ in epochs:
      for b in idx.reshape(-1, local):
        yield {'image': mapped.rows(b), 'label': labels[b]}

  def eval_batches(self, split: str = 'validation', *, batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
    """One pass like `data.pipeline.eval_batches`: {'image': float32 features, 'label',
    'mask'}."""
    _, labels = pipeline.split_files(self.info, split)
    mapped = self._mapped(split, len(labels))
    local = pipeline.local_batch_size(batch_size, process_index, process_count)
    idx = pipeline.padded_indices(len(labels), batch_size, local, process_index)
    for b in idx.reshape(-1, local):
      valid = b >= 0
      j = np.maximum(b, 0)
      x = mapped.rows(j)
      x[~valid] = 0.0  # Padding (masked out of every sum).
      yield {'image': x, 'label': np.where(valid, labels[j], 0).astype(np.int32), 'mask': valid}
