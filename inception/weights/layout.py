"""The layout converted weights must have: InceptionV3's variable paths and shapes, built from
the Flax model itself (`jax.eval_shape`, no compute), and the four arrays of a Conv-BN unit."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from inception.models import inception_v3 as model_lib
from inception.weights.store import COLLECTIONS, WeightsError


@functools.lru_cache(maxsize=None)
def model_shapes(include_top: bool) -> dict[str, tuple[int, ...]]:
  """{'params/mixed0/branch1x1/conv/kernel': shape, ...} of the full model (no jax compute)."""
  import jax
  import jax.numpy as jnp
  net = model_lib.InceptionV3(stop_at='predictions' if include_top else 'avg_pool',
                              include_top=include_top)
  size = model_lib.MIN_IMAGE_SIZE
  shapes = jax.eval_shape(net.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  flat = traverse_util.flatten_dict({c: shapes[c] for c in COLLECTIONS}, sep='/')
  return {k: tuple(v.shape) for k, v in flat.items()}


def unit_entries(block: str, unit: str, kernel, beta, mean, var) -> dict[str, np.ndarray]:
  """The four arrays of one Conv-BN unit under their variable paths (float32)."""
  base = f'{block}/{unit}'
  return {f'params/{base}/conv/kernel': kernel, f'params/{base}/bn/bias': beta,
          f'batch_stats/{base}/bn/mean': mean, f'batch_stats/{base}/bn/var': var}


def check_shapes(flat: Mapping[str, np.ndarray], include_top: bool, source: str,
                  origin: Mapping[str, str]) -> dict[str, np.ndarray]:
  """Asserts `flat` has exactly the model's paths and shapes; returns float32 copies."""
  expected = model_shapes(include_top)
  missing = sorted(set(expected) - set(flat))
  extra = sorted(set(flat) - set(expected))
  if missing or extra:
    raise WeightsError(f'{source}: converted variables do not match InceptionV3 '
                       f'(include_top={include_top}): missing {missing[:5]}, unexpected '
                       f'{extra[:5]}')
  out = {}
  for key in flat:  # In the source's order, so the first wrong layer is reported.
    shape, found = expected[key], tuple(np.shape(flat[key]))
    if found != shape:
      raise WeightsError(f'{source}: layer {origin.get(key, "?")} -> {key}: expected shape '
                         f'{shape}, found {found}; this file is not this InceptionV3 (or its '
                         'layers are in an unexpected order)')
    out[key] = np.ascontiguousarray(flat[key], dtype=np.float32)
  return out
