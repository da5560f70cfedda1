"""`validate(config)`: every check that can fail before heavy work, with the key and choices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_collections

import data.config
from inception import checkpoints
from inception import model as inception_model
from inception import optim
from inception import param_rules
from inception import preprocessing
from inception import transfer

CUTS = tuple(e for e in inception_model.ENDPOINTS if e != 'predictions')
WEIGHT_NAMES = ('tf2015', 'keras', 'keras_top')
NONFINITE = ('stop', 'skip')
LOSSES = ('auto',)
FEATURE_CACHE = ('auto', 'on', 'off')  # inception.feature_cache.MODES


def _weight_names() -> tuple[str, ...]:
  try:
    from inception import weights as weights_lib  # pylint: disable=g-import-not-at-top
    return tuple(weights_lib.WEIGHTS)
  except ImportError:
    return WEIGHT_NAMES


def _choice(key: str, value: Any, choices) -> None:
  if value not in choices:
    raise ValueError(f'config.{key}={value!r} is not valid; valid: '
                     f'{", ".join(map(str, choices))}')


def _number(key: str, value: Any, *, lo=None, hi=None, integer=False, lo_open=False,
            hi_open=False) -> None:
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind):
    raise ValueError(f'config.{key}={value!r} must be {"an integer" if integer else "a number"}')
  if value != value:
    raise ValueError(f'config.{key} is NaN')
  bad = ((lo is not None and (value <= lo if lo_open else value < lo)) or
         (hi is not None and (value >= hi if hi_open else value > hi)))
  if bad:
    lb = '(' if lo_open else '['
    rb = ')' if hi_open else ']'
    raise ValueError(f'config.{key}={value!r} must be in {lb}{lo}, {hi}{rb}')


def _bool(key: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise ValueError(f'config.{key}={value!r} must be True or False')


def check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
               prefix: str = '') -> None:
  """Unknown (misspelt) or missing keys vs the default config, named with the valid ones."""
  have, want = set(config.keys()), set(reference.keys())
  for key in sorted(have - want):
    raise ValueError(f"Unknown config key '{prefix}{key}'; valid keys here: "
                     f'{", ".join(sorted(want))}')
  for key in sorted(want - have):
    raise ValueError(f"Missing config key '{prefix}{key}' (start from configs/default.py)")
  for key in sorted(want):
    if isinstance(reference[key], ml_collections.ConfigDict):
      if not isinstance(config[key], ml_collections.ConfigDict):
        raise ValueError(f'config.{prefix}{key} must be a section, got {config[key]!r}')
      check_keys(config[key], reference[key], f'{prefix}{key}.')


def validate(config: ml_collections.ConfigDict, *, workdir: str | os.PathLike | None = None,
             device_count: int | None = None) -> None:
  """Raises ValueError naming the first bad key and what is valid.

  Args:
    config: a full run config (configs/default.py layout).
    workdir: checked to be creatable and writable, when given.
    device_count: batch sizes must divide by it (default: jax.device_count(), which starts
      the JAX backend; pass it to keep this check light).
  """
  from configs import default  # pylint: disable=g-import-not-at-top
  check_keys(config, default.get_config())
  _number('seed', config.seed, lo=0, integer=True)
  data.config.validate(config.data)
  _number('data.image_size', config.data.image_size, lo=inception_model.MIN_IMAGE_SIZE,
          integer=True)
  _choice('data.preprocess', config.data.preprocess, tuple(preprocessing.PREPROCESSORS))

  m = config.model
  _choice('model.cut', m.cut, CUTS)
  if m.weights not in ('random',) + _weight_names() and not Path(
      os.path.expanduser(m.weights)).exists():
    raise ValueError(f'config.model.weights={m.weights!r} is neither a known name (random, '
                     f'{", ".join(_weight_names())}) nor an existing file')
  _choice('model.head', m.head, transfer.HEADS)
  _number('model.dense_units', m.dense_units, lo=0, integer=True)
  _number('model.dropout', m.dropout, lo=0, hi=1, hi_open=True)
  _choice('model.dtype', m.dtype, tuple(transfer.DTYPES))
  cut_index = inception_model.ENDPOINTS.index(m.cut)
  for block in m.batchnorm_train_blocks:
    _choice('model.batchnorm_train_blocks[]', block, inception_model.BLOCKS)
    if inception_model.BLOCKS.index(block) > cut_index:
      raise ValueError(f'config.model.batchnorm_train_blocks has {block!r}, after the cut '
                       f'model.cut={m.cut!r}; valid: {", ".join(inception_model.BLOCKS[:cut_index + 1])}')

  o = config.optimizer
  _choice('optimizer.name', o.name, optim.OPTIMIZERS)
  _number('optimizer.lr', o.lr, lo=0, lo_open=True)
  _number('optimizer.rho', o.rho, lo=0, hi=1, hi_open=True)
  _number('optimizer.epsilon', o.epsilon, lo=0, lo_open=True)
  _number('optimizer.momentum', o.momentum, lo=0, hi=1, hi_open=True)
  _bool('optimizer.eps_in_sqrt', o.eps_in_sqrt)
  param_rules.check_rules(o.param_rules, 'config.optimizer.param_rules')
  if not o.param_rules:
    raise ValueError('config.optimizer.param_rules is empty; end it with (".*", 1.0)')

  t = config.train
  _number('train.epochs', t.epochs, lo=1, integer=True)
  _number('train.batch_size', t.batch_size, lo=1, integer=True)
  _choice('train.loss', t.loss, LOSSES)
  _choice('train.on_nonfinite', t.on_nonfinite, NONFINITE)
  _number('train.log_every_steps', t.log_every_steps, lo=1, integer=True)
  _number('train.eval_every_epochs', t.eval_every_epochs, lo=1, integer=True)
  _number('train.prefetch_to_device', t.prefetch_to_device, lo=1, integer=True)
  _choice('train.feature_cache', t.feature_cache, FEATURE_CACHE)
  if t.feature_cache == 'on':
    # Config-only reasons here; the param_rules one needs the param tree (trainer start-up).
    from inception import feature_cache  # pylint: disable=g-import-not-at-top
    feature_cache.check_on(config)

  k = config.checkpoint
  _number('checkpoint.every_steps', k.every_steps, lo=0, integer=True)
  _bool('checkpoint.every_epoch', k.every_epoch)
  _number('checkpoint.keep', k.keep, lo=1, integer=True)
  _bool('checkpoint.keep_best', k.keep_best)
  _choice('checkpoint.best_metric', k.best_metric, checkpoints.BEST_METRICS)
  _bool('checkpoint.async_save', k.async_save)
  _number('eval.batch_size', config.eval.batch_size, lo=1, integer=True)

  if device_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    device_count = jax.device_count()
  for key, value in (('train.batch_size', t.batch_size), ('eval.batch_size',
                                                          config.eval.batch_size)):
    if value % device_count:
      raise ValueError(f'config.{key}={value} is not divisible by the device count '
                       f'{device_count}; use a multiple of {device_count}')

  if workdir is not None:
    check_workdir(workdir)


def validate_eval(config: ml_collections.ConfigDict) -> None:
  """Checks a --config given to eval/predict: its keys, and the values of the keys those may
  change (inception.run_record.EVAL_OVERRIDABLE). Its other values are compared with the run's
  record, not validated: the run's data or weights file need not exist where it is evaluated."""
  from configs import default  # pylint: disable=g-import-not-at-top
  check_keys(config, default.get_config())
  _number('eval.batch_size', config.eval.batch_size, lo=1, integer=True)
  _number('data.num_parallel_calls', config.data.num_parallel_calls, lo=-1, integer=True)
  if config.data.num_parallel_calls == 0:
    raise ValueError('config.data.num_parallel_calls=0 is not valid; use -1 (AUTOTUNE) or >= 1')
  _number('data.prefetch', config.data.prefetch, lo=-1, integer=True)
  _bool('data.deterministic', config.data.deterministic)


def check_workdir(workdir: str | os.PathLike) -> None:
  """The workdir exists or can be created, and is writable."""
  path = Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f'--workdir {path} cannot be created: {e.strerror}; choose another '
                     f'--workdir') from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise ValueError(f'--workdir {path} is not writable; choose another --workdir')
