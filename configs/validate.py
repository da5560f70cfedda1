"""`validate(config)`: every check that can fail before heavy work, with the key and choices.

The unknown-key check against configs/default.py is here; each section's values are checked
by the code that owns it (`inception.train.validate.validate_config` asks each owner: data,
the model, the optimizer, the steps, the loop's actions, the feature cache, the checkpoints).
"""

from __future__ import annotations

import os

import ml_collections

from inception.tools import evaluate
from inception.train import validate as run_validate


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
  run_validate.validate_config(config, workdir=workdir, device_count=device_count)


def validate_eval(config: ml_collections.ConfigDict) -> None:
  """Checks a --config given to eval/predict: its keys, and the values of the keys those may
  change (`evaluate.validate_overrides`). Its other values are compared with the run's record,
  not validated: the run's data or weights file need not exist where it is evaluated."""
  from configs import default  # pylint: disable=g-import-not-at-top
  check_keys(config, default.get_config())
  evaluate.validate_overrides(config)
