"""A run config checked section by section, each by the code that owns it; and the workdir.

`validate_config` asks data (`data.config`), the model (`transfer`), the optimizer (`optim`),
the steps, the loop's actions, the feature cache and the checkpoints for their keys, and checks
the run's own: the seed, the epochs, the batch sizes against the device count.
`configs/validate.py` adds the unknown-key check.
"""

from __future__ import annotations

import os

import jax
import ml_collections

import data.config
from inception import checks
from inception import paths
from inception import transfer
from inception.train import actions
from inception.train import checkpoints
from inception.train import optim
from inception.train import steps
from inception.train import warm_start
from inception.train.feature_cache import policy as feature_cache_policy


def validate_config(config: ml_collections.ConfigDict, *,
                    workdir: str | os.PathLike | None = None,
                    device_count: int | None = None) -> None:
  """ValueError names the first bad key and what is valid.

  workdir: checked to be creatable and writable, when given. device_count: batch sizes, and
  train.batch_size / train.grad_accum_steps, must divide by it (default: jax.device_count()).
  """
  checks.number('seed', config.seed, lo=0, integer=True)
  data.config.validate(config.data)
  transfer.validate_config(config)
  warm_start.validate_config(config.model)
  optim.validate_config(config.optimizer)
  steps.validate_config(config)
  actions.validate_config(config.train)
  feature_cache_policy.validate_config(config)
  checkpoints.validate_config(config.checkpoint)
  t = config.train
  checks.number('train.epochs', t.epochs, lo=1, integer=True)
  checks.number('train.batch_size', t.batch_size, lo=1, integer=True)
  checks.number('train.prefetch_to_device', t.prefetch_to_device, lo=1, integer=True)
  checks.number('eval.batch_size', config.eval.batch_size, lo=1, integer=True)
  if device_count is None:
    device_count = jax.device_count()
  for key, value in (('train.batch_size', t.batch_size),
                     ('eval.batch_size', config.eval.batch_size)):
    if value % device_count:
      raise ValueError(f'config.{key}={value} is not divisible by the device count '
                       f'{device_count}; use a multiple of {device_count}')
  k = t.grad_accum_steps  # Each micro-batch of batch_size / k rows is split over the devices.
  if (t.batch_size // k) % device_count:
    raise ValueError(f'config.train.batch_size={t.batch_size} / config.train.grad_accum_steps='
                     f'{k} = {t.batch_size // k} (the micro-batch) is not divisible by the '
                     f'device count {device_count}; use a batch_size that is a multiple of '
                     f'{k * device_count} (grad_accum_steps * device count)')
  if workdir is not None:
    check_workdir(workdir)


def check_workdir(workdir: str | os.PathLike) -> None:
  """The workdir (a local path or a URI) exists or can be created, and is writable."""
  path = paths.as_path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f'--workdir {path} cannot be created: {e.strerror or e}; choose another '
                     f'--workdir') from None
  if paths.is_local(path):
    if not os.access(path, os.W_OK | os.X_OK):
      raise ValueError(f'--workdir {path} is not writable; choose another --workdir')
    return
  probe = path / f'.write-test-{os.getpid()}'  # An object store has no permission bits to ask.
  try:
    paths.write_text(probe, 'ok')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  # Each file system raises its own.
    raise ValueError(f'--workdir {path} is not writable ({type(e).__name__}: {e}); choose '
                     'another --workdir') from None
