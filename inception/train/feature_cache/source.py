"""The run's batches from cached cut-layer features: a `batches.BatchSource` over the store.

What is cached: the cut layer's features [N, h, w, C]; for a 'gap' head (`model.head`) the
globally average-pooled features [N, C] instead (`transfer.BackboneOnly(pooled=True)`, the same
mean the head would take), h * w times smaller. Stored as `train.feature_cache_dtype`
('float32' by default, bit-identical to the uncached features; 'float16' or 'bfloat16' halve
the file and round the features) and always served as float32 batches, in the order of
`data.pipeline.train_batches` (its per-(seed, epoch) permutation) and padded like
`data.pipeline.eval_batches`.

Several processes (`jax.distributed`; the cache directory must be on a filesystem every process
sees): each process verifies its view of the file, then they agree (an all-gather of the flags)
to load only if every one found a valid copy, else all compute: computing is a collective (the
jitted backbone over globally sharded batches). Each batch's features are all-gathered (that
batch only) and process 0 alone writes the file; a barrier then holds every process until it is
in place, and each memory-maps it (checked against the sidecar, not re-hashed). The verified
mappings of this source are kept (`clear_memory` forgets them), so evaluating every epoch does
not re-hash the file; a kept mapping takes part in the agreement too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from data import cache as data_cache
from data import pipeline
from inception import transfer
from inception.train import sharding
from inception.train import xla_options
from inception.train.feature_cache import key as key_lib
from inception.train.feature_cache import store as store_lib
from inception.weights import store as weights_store


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


class CachedFeatures:
  """Cut-layer features of one run's splits: computed once, streamed to disk, read back mapped.

  Serves what the steps of `step_model` (the head alone) take. `forward_batches` counts the
  backbone batches this source ran, `store.files_written` the files it wrote.
  """

  def __init__(self, config: Any, model: transfer.TransferModel, backbone_variables: dict,
               info: Any, provenance: dict, mesh: Any, *,
               directory: str | os.PathLike | None = None,
               log: Callable[[str], None] = print):
    """backbone_variables: {'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}.
    directory: where the keys' folders go (default: <cache>/features, `data.cache`)."""
    self.config, self.model, self.info, self.mesh, self.log = config, model, info, mesh, log
    self.step_model = transfer.HeadOnly(model)
    self.pooled = key_lib.is_pooled(config)
    # A host copy, replicated anew: the train step donates (deletes) the state's buffers.
    host = jax.device_get(backbone_variables)
    self.variables = sharding.replicate(host, mesh)
    self.ingredients = key_lib.ingredients(
        config, provenance, info.manifest_sha256,
        weights_store.content_sha256(traverse_util.flatten_dict(host, sep='/')))
    self.key = key_lib.digest(self.ingredients)
    base = directory if directory is not None else data_cache.cache_dir() / 'features'
    self.store = store_lib.Store(os.path.join(base, self.key),
                                 store_lib.storage_dtype(config.train))
    self.forward_batches = 0
    self._mapped: dict[str, store_lib.Mapped] = {}
    self._step = None

  @classmethod
  def of_state(cls, config: Any, model: transfer.TransferModel, state: Any, info: Any,
               provenance: dict, mesh: Any, *, directory: str | os.PathLike | None = None,
               log: Callable[[str], None] = print) -> 'CachedFeatures':
    """The source for a train state whose frozen backbone computes the features."""
    variables = {'params': {'backbone': state.params['backbone']},
                 'batch_stats': {'backbone': state.batch_stats.get('backbone', {})}}
    fc = cls(config, model, variables, info, provenance, mesh, directory=directory, log=log)
    log(f'Feature cache: key {fc.key[:16]} in {fc.store.dir} '
        f'({"pooled" if fc.pooled else "spatial"} features, stored as {fc.store.storage})')
    return fc

  def clear_memory(self) -> None:
    """Forgets the verified mappings (the next use verifies and maps the disk copy again)."""
    self._mapped.clear()

  def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, h, w, C], or [N, C] pooled, labels int32 [N]) of `split`, manifest order.

    The features are the file's read-only memory map in its storage dtype
    (`store.decode`); the batches serve float32 rows from it.
    """
    _, labels = pipeline.split_files(self.info, split)
    return self._mapping(split, len(labels)).array, labels

  def _mapping(self, split: str, count: int) -> store_lib.Mapped:
    """The split's verified mapping: kept, from the disk, or computed (all processes)."""
    mapped = self._mapped.get(split) or self.store.load(split, count, self.log)
    # Every process must take the same branch: computing is a collective.
    if not sharding.all_agree(mapped is not None):
      if mapped is not None:
        self.log(f'Feature cache: another process has no valid copy of {split}; all recompute.')
      self._compute(split, count)
      sharding.barrier(f'feature_cache {self.key[:16]} {split}')  # Process 0's file is in place.
      try:
        mapped = self.store.open(split, count, verify=False)
      except store_lib.UNREADABLE as e:
        raise RuntimeError(f'Feature cache: process {jax.process_index()} cannot read the '
                           f'{split} features process 0 wrote to {self.store.dir} ({e}); with '
                           f'several processes the cache directory must be on a filesystem '
                           f'all of them share ($INCEPTION_FLAX_CACHE).') from e
    self._mapped[split] = mapped
    return mapped

  def _compute(self, split: str, count: int) -> None:
    """Backbone forward over `split` (every process); process 0 streams it to the store."""
    self.log(f'Feature cache: computing {split} features ({count} images, backbone '
             f'{self.model.cut}{", pooled" if self.pooled else ""}, stored as '
             f'{self.store.storage})')
    blocks = self._forward(split)
    if jax.process_index() == 0:
      self.store.write(split, count, blocks, self.ingredients, self.log)
    else:
      for _ in blocks:  # Takes part in the collective forward.
        pass

  def _forward(self, split: str) -> Iterator[np.ndarray]:
    """`split`'s features, encoded for storage: [n, ...] per global eval batch, its real
    examples in manifest order. Every process receives every batch (so a float16 overflow
    stops all of them at the same batch)."""
    if self._step is None:
      self._step = make_features_step(self.model, self.mesh, pooled=self.pooled)
    batches = pipeline.eval_batches(self.info, self.config.data, split=split,
                                    batch_size=self.config.eval.batch_size,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
    gather = lambda feats, mask: store_lib.encode(
        sharding.to_host(feats)[sharding.to_host(mask)], self.store.storage)
    pending = None
    for batch in sharding.prefetch_to_device(batches, self.mesh):
      out = (self._step(self.variables, batch['image']), batch['mask'])
      self.forward_batches += 1
      if pending is not None:  # Fetch one batch behind, so the next forward is queued.
        yield gather(*pending)
      pending = out
    if pending is not None:
      yield gather(*pending)

  def train_batches(self, start_step: int = 0) -> Iterator[dict]:
    """Infinite {'image': float32 features [B, h, w, C] (or [B, C]), 'label': int32 [B]},
    B = this process's share of `train.batch_size`; the examples of
    `data.pipeline.train_batches` at every (seed, step)."""
    _, labels = pipeline.split_files(self.info, 'train')
    mapped = self._mapping('train', len(labels))
    batch_size = self.config.train.batch_size
    local = pipeline.local_batch_size(batch_size, jax.process_index(), jax.process_count())
    pipeline.steps_per_epoch(self.info, batch_size)  # Raises when the batch is too large.
    epochs = pipeline.epoch_indices(len(labels), batch_size, local, jax.process_index(),
                                     int(self.config.seed), int(start_step), labels=labels,
                                     sampling=self.config.data.sampling)
    for idx, _, _ in epochs:
      for b in idx.reshape(-1, local):
        yield {'image': mapped.rows(b), 'label': labels[b]}

  def eval_batches(self, split: str = 'validation') -> Iterator[dict]:
    """One pass like `data.pipeline.eval_batches` (`eval.batch_size`): {'image': float32
    features, 'label', 'mask'}."""
    _, labels = pipeline.split_files(self.info, split)
    mapped = self._mapping(split, len(labels))
    batch_size = self.config.eval.batch_size
    local = pipeline.local_batch_size(batch_size, jax.process_index(), jax.process_count())
    idx = pipeline.padded_indices(len(labels), batch_size, local, jax.process_index())
    for b in idx.reshape(-1, local):
      valid = b >= 0
      j = np.maximum(b, 0)
      x = mapped.rows(j)
      x[~valid] = 0.0  # Padding (masked out of every sum).
      yield {'image': x, 'label': np.where(valid, labels[j], 0).astype(np.int32), 'mask': valid}
