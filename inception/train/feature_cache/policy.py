"""Whether a run may use the feature cache: only where cached features train exactly as the
image files do (frozen backbone and its BatchNorm, no augmentation)."""

from __future__ import annotations

from typing import Any, Callable

from inception import checks
from inception.train import param_rules
from inception.train.feature_cache import store

MODES = ('auto', 'on', 'off')


def validate_config(config: Any) -> None:
  """Checks `train.feature_cache` and `train.feature_cache_dtype` (ValueError naming the key),
  and with 'on' the reasons that need only the config."""
  checks.choice('train.feature_cache', config.train.feature_cache, MODES)
  checks.choice('train.feature_cache_dtype', store.storage_dtype(config.train),
                tuple(store.STORAGE_DTYPES))
  if config.train.feature_cache == 'on':
    _refuse_on(config, _why_not(config))


def use_cache(config: Any, params: Any, log: Callable[[str], None] = print) -> bool:
  """Whether this run uses the cache, per `config.train.feature_cache`; logs the decision.

  params: the model's param tree (arrays or shapes), to check that every backbone param is
  frozen.
  Raises:
    ValueError: feature_cache='on' but the cache would change training (says why).
  """
  mode = config.train.feature_cache
  checks.choice('train.feature_cache', mode, MODES)
  if mode == 'off':
    return False
  reason = _why_not(config, params)
  _refuse_on(config, reason)
  if reason is None:
    log(f'Feature cache: on (train.feature_cache={mode!r}; backbone frozen, no augmentation): '
        f'the backbone runs once per split, epochs train the head on cached features.')
    return True
  log(f'Feature cache: not used (train.feature_cache="auto"): {reason}.')
  return False


def _refuse_on(config: Any, reason: str | None) -> None:
  if reason and config.train.feature_cache == 'on':
    raise ValueError(f'config.train.feature_cache="on" but cached features would change '
                     f'training: {reason}; or use "auto"/"off".')


def _why_not(config: Any, params: Any = None) -> str | None:
  """Why cached features would differ from the image files (one line), or None.

  params: None skips the param_rules check (config-only).
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
