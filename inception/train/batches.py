"""Where a run's batches come from: the image files through tf.data, or cached features.

The source is chosen once, when the run is built (`choose`); the loop and the evaluation only
ask it for batches, and the steps are made for its `step_model`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax

import data
from inception.train.feature_cache import policy as feature_cache_policy
from inception.train.feature_cache import source as feature_cache_source


class BatchSource(Protocol):
  """A run's batches, each process's share of the global batch, sharded like the steps want.

  step_model: the model the train and eval steps apply to these batches' 'image'.
  """
  step_model: nn.Module

  def train_batches(self, start_step: int = 0) -> Iterator[dict]:
    """Infinite {'image', 'label'} from `start_step` on, the same at every (seed, step)."""

  def eval_batches(self, split: str = 'validation') -> Iterator[dict]:
    """One pass over `split`: {'image', 'label', 'mask'}, the last batch padded."""


class FileBatches:
  """The image files of the run's prepared data, through `data.pipeline` (tf.data)."""

  def __init__(self, config: Any, info: Any, model: nn.Module):
    self.config, self.info, self.step_model = config, info, model
    self._shard = dict(process_index=jax.process_index(), process_count=jax.process_count())

  def train_batches(self, start_step: int = 0) -> Iterator[dict]:
    return data.train_batches(self.info, self.config.data, batch_size=self.config.train.batch_size,
                              seed=self.config.seed, start_step=start_step, **self._shard)

  def eval_batches(self, split: str = 'validation') -> Iterator[dict]:
    return data.eval_batches(self.info, self.config.data, split=split,
                             batch_size=self.config.eval.batch_size, **self._shard)


def choose(config: Any, model: nn.Module, state: Any, info: Any, provenance: dict, mesh: Any, *,
           feature_dir: str | os.PathLike | None = None,
           log: Callable[[str], None] = print) -> BatchSource:
  """Cached features when `train.feature_cache` and the config allow them (the state's frozen
  backbone computes them, under `feature_dir`, default <cache>/features), else the files."""
  if feature_cache_policy.use_cache(config, state.params, log):
    return feature_cache_source.CachedFeatures.of_state(
        config, model, state, info, provenance, mesh, directory=feature_dir, log=log)
  return FileBatches(config, info, model)
