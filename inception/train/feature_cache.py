"""Feature caching: with a frozen backbone and no augmentation, run the backbone once per split.

When every backbone param is frozen (`optimizer.param_rules` multiplier 0), no backbone
BatchNorm trains (`model.batchnorm_train_blocks` empty) and augmentation is the identity, the
backbone maps each image to the same cut-layer features in every epoch. `FeatureCache`
computes them once per split (jitted backbone forward, batches sharded like the eval step, in
manifest order), keeps them in memory and on disk, and serves training batches in exactly the
order of `data.pipeline.train_batches` (its per-(seed, epoch) permutation) and padded eval
batches like `data.pipeline.eval_batches`. The head then trains on them with the same jitted
step (`transfer.HeadOnly` in `steps.make_train_step`): same masked optimizer, dropout keys and
full-params train state, so checkpoints are the same as without the cache.

On disk: `<cache>/features/<key>/<split>.npy` (float32 [N, h, w, C], manifest order) and a
`<split>.json` sidecar with the .npy's sha256, written atomically (tmp + os.replace, sidecar
last). key = sha256 of `key_ingredients` (backbone weights provenance and content hash, cut,
image size, resize method, preprocessing, model dtype, the manifest's sha256 -- which lists
every file in order with its own sha256). A missing sidecar, a hash or shape mismatch or an
unreadable file is reported and recomputed.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from data import cache as data_cache
from data import pipeline
from inception.train import param_rules
from inception.train import sharding
from inception.models import transfer
from inception import weights
from inception.train import xla_options

MODES = ('auto', 'on', 'off')
FORMAT_VERSION = 2  # Bump when the features a key names change (e.g. the backbone's code).
MEMORY_LIMIT_BYTES = 4 * 2**30  # In-process copies kept across runs (oldest evicted first).
# Where the disk cache lives; None = <cache>/features (data.cache.cache_dir()). Benchmarks point
# it at a fresh folder to time the feature computation.
DIRECTORY: str | os.PathLike | None = None

# Backbone forward batches run by this process (tests assert a warm cache runs none).
stats = {'forward_batches': 0}
_memory: collections.OrderedDict = collections.OrderedDict()  # (key, split) -> float32 array


def clear_memory() -> None:
  """Drops the in-process copies (the next use reads the disk cache)."""
  _memory.clear()


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
  }


def cache_key(ingredients: dict) -> str:
  blob = json.dumps(ingredients, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(blob.encode()).hexdigest()


def make_features_step(model: transfer.TransferModel, mesh: Any = None,
                       compiler_options: dict | None = None) -> Callable:
  """Jitted `(variables, images [B, H, W, 3]) -> features [B, h, w, C]` (eval-mode backbone)."""
  backbone = transfer.BackboneOnly(model)
  kwargs = {}
  if mesh is not None:
    kwargs = dict(in_shardings=(sharding.replicated(mesh), sharding.data_sharded(mesh)),
                  out_shardings=sharding.data_sharded(mesh))
  options = xla_options.compiler_options() if compiler_options is None else compiler_options
  return jax.jit(backbone.apply, compiler_options=options, **kwargs)


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


class FeatureCache:
  """Cut-layer features of one run's splits: computed once, kept in memory and on disk."""

  def __init__(self, config: Any, model: transfer.TransferModel, backbone_variables: dict,
               info: Any, provenance: dict, mesh: Any, *, directory: str | os.PathLike |
               None = None, log: Callable[[str], None] = print):
    """backbone_variables: {'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}."""
    self.config, self.model, self.info, self.mesh, self.log = config, model, info, mesh, log
    # A host copy, replicated anew: the train step donates (deletes) the state's buffers.
    host = jax.device_get(backbone_variables)
    self.variables = sharding.replicate(host, mesh)
    self.ingredients = key_ingredients(
        config, provenance, info.manifest_sha256,
        weights.content_sha256(traverse_util.flatten_dict(host, sep='/')))
    self.key = cache_key(self.ingredients)
    directory = directory or DIRECTORY
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
    log(f'Feature cache: key {fc.key[:16]} in {fc.dir}')
    return fc

  def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, h, w, C], labels int32 [N]) of `split`, in manifest order."""
    _, labels = pipeline.split_files(self.info, split)
    feats = _memory.get((self.key, split))
    if feats is None:
      feats = self._load(split, len(labels))
      if feats is None:
        feats = self._compute(split, len(labels))
        self._save(split, feats)
      self._remember(split, feats)
    return feats, labels

  def _remember(self, split: str, feats: np.ndarray) -> None:
    _memory[(self.key, split)] = feats
    while len(_memory) > 1 and sum(a.nbytes for a in _memory.values()) > MEMORY_LIMIT_BYTES:
      _memory.popitem(last=False)

  def _paths(self, split: str) -> tuple[pathlib.Path, pathlib.Path]:
    return self.dir / f'{split}.npy', self.dir / f'{split}.json'

  def _load(self, split: str, count: int) -> np.ndarray | None:
    npy, side = self._paths(split)
    if not npy.exists() and not side.exists():
      return None
    try:
      meta = json.loads(side.read_text())
      if weights.file_digest(npy) != meta['sha256']:
        raise ValueError('sha256 differs from the sidecar')
      feats = np.load(npy, allow_pickle=False)
      if feats.shape[0] != count or list(feats.shape) != meta['shape']:
        raise ValueError(f'shape {feats.shape} does not fit {count} examples / {meta["shape"]}')
    except (OSError, ValueError, KeyError, TypeError) as e:
      self.log(f'WARNING: feature cache {npy} is corrupt or incomplete ({e}); recomputing.')
      return None
    self.log(f'Feature cache: loaded {split} features {feats.shape} from {npy}')
    return feats

  def _save(self, split: str, feats: np.ndarray) -> None:
    if jax.process_index() != 0:
      return
    self.dir.mkdir(parents=True, exist_ok=True)
    npy, side = self._paths(split)
    with weights.atomic_write(npy) as f:
      np.save(f, feats, allow_pickle=False)
    meta = {'sha256': weights.file_digest(npy), 'shape': list(feats.shape),
            'dtype': str(feats.dtype), 'split': split, 'ingredients': self.ingredients}
    with weights.atomic_write(side) as f:
      f.write(json.dumps(meta, indent=1).encode())

  def _compute(self, split: str, count: int) -> np.ndarray:
    """Backbone forward over `split` in eval batches (manifest order), gathered on the host."""
    if self._step is None:
      self._step = make_features_step(self.model, self.mesh)
    self.log(f'Feature cache: computing {split} features ({count} images, backbone '
             f'{self.model.cut})')
    batches = pipeline.eval_batches(self.info, self.config.data, split=split,
                                    batch_size=self.config.eval.batch_size,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
    chunks, pending = [], None
    for batch in sharding.prefetch_to_device(batches, self.mesh):
      out = (self._step(self.variables, batch['image']), batch['mask'])
      stats['forward_batches'] += 1
      if pending is not None:  # Fetch one batch behind, so the next forward is queued.
        chunks.append(self._fetch(*pending))
      pending = out
    if pending is not None:
      chunks.append(self._fetch(*pending))
    feats = np.concatenate(chunks) if chunks else np.zeros([0], np.float32)
    if feats.shape[0] != count:
      raise RuntimeError(f'Feature cache: got {feats.shape[0]} {split} features for {count} '
                         f'examples')
    return feats

  @staticmethod
  def _fetch(feats: jax.Array, mask: jax.Array) -> np.ndarray:
    return _to_host(feats)[_to_host(mask)].astype(np.float32)

  def train_batches(self, *, batch_size: int, seed: int, start_step: int = 0,
                    process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """Infinite {'image': features [B, h, w, C], 'label': int32 [B]}, B = local batch.

    Same examples per (seed, step) as `data.pipeline.train_batches`: its epoch permutation.
    """
    feats, labels = self.features('train')
    local = pipeline.local_batch_size(batch_size, process_index, process_count)
    pipeline.steps_per_epoch(self.info, batch_size)
    epochs = pipeline.epoch_indices(len(labels), batch_size, local, process_index, int(seed),
                                     int(start_step))
    for idx, _, _ in epochs:
      for b in idx.reshape(-1, local):
        yield {'image': feats[b], 'label': labels[b]}

  def eval_batches(self, split: str = 'validation', *, batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
    """One pass like `data.pipeline.eval_batches`: {'image': features, 'label', 'mask'}."""
    feats, labels = self.features(split)
    local = pipeline.local_batch_size(batch_size, process_index, process_count)
    idx = pipeline.padded_indices(len(labels), batch_size, local, process_index)
    for b in idx.reshape(-1, local):
      valid = b >= 0
      j = np.maximum(b, 0)
      x = feats[j]
      x[~valid] = 0.0  # Padding (masked out of every sum).
      yield {'image': x, 'label': np.where(valid, labels[j], 0).astype(np.int32), 'mask': valid}
