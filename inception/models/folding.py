"""BatchNorm folded into the preceding conv, for a frozen InceptionV3 backbone.

A frozen unit computes relu(bn(conv(x))) with BatchNorm's running statistics, an affine map per
output channel c:

    bn(z)[c] = (z[c] - mean[c]) / sqrt(var[c] + eps) + beta[c]      (no scale: Keras' conv2d_bn)

so it equals one conv with kernel' = kernel * s and bias' = beta - mean * s, s = 1/sqrt(var+eps),
scaled along the kernel's last (output) axis. The folded network does the same arithmetic in one
op instead of two passes over every activation, and leaves XLA nothing to recompute: on a 2-core
CPU the backbone forward runs faster (figures in bench/README.md).

    folded = folding.fold_batchnorm(variables)          # {'params': ...} without batch_stats
    model = folding.folded_model(InceptionV3(stop_at='mixed7'))
    features = model.apply(folded, images)              # == the unfolded model's output

Folding is only right while the BatchNorm statistics are frozen: `train_blocks` is refused by the
folded model. The fold runs once at load time, in float64 on the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from inception.models import inception_v3 as model_lib


def _is_unit(params: Any) -> bool:
  """True for a ConvBN's params: {'conv': {'kernel'}, 'bn': {'bias'}}."""
  return (isinstance(params, Mapping) and set(params) == {'conv', 'bn'}
          and isinstance(params['conv'], Mapping) and set(params['conv']) == {'kernel'}
          and isinstance(params['bn'], Mapping) and set(params['bn']) == {'bias'})


def fold_unit(kernel: Any, beta: Any, mean: Any, var: Any,
              epsilon: float = model_lib.BATCHNORM_EPSILON) -> tuple[np.ndarray, np.ndarray]:
  """One conv+BatchNorm as a conv with bias.

  Args:
    kernel: conv kernel [kh, kw, C_in, C_out].
    beta, mean, var: BatchNorm offset and running statistics, each [C_out].
    epsilon: BatchNorm epsilon (Keras InceptionV3: 1e-3).

  Returns:
    (kernel [kh, kw, C_in, C_out], bias [C_out]) in the kernel's dtype, computed in float64.
  """
  k = np.asarray(kernel, np.float64)
  shapes = {name: np.shape(v) for name, v in (('bn/bias', beta), ('mean', mean), ('var', var))}
  bad = {name: s for name, s in shapes.items() if s != (k.shape[-1],)}
  if bad:
    raise ValueError(f'BatchNorm parameters {bad} do not match the kernel {k.shape}: each must be '
                     f'[{k.shape[-1]}] (the kernel\'s output channels)')
  scale = 1.0 / np.sqrt(np.asarray(var, np.float64) + epsilon)
  bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
  dtype = np.asarray(kernel).dtype
  return (k * scale).astype(dtype), bias.astype(dtype)


def fold_batchnorm(variables: Mapping[str, Any],
                   epsilon: float = model_lib.BATCHNORM_EPSILON) -> dict[str, Any]:
  """Folds every ConvBN unit found in `variables` into a conv with bias.

  Args:
    variables: {'params': ..., 'batch_stats': ...} of an `InceptionV3` (or of any model holding
      one in a sub-tree, e.g. a transfer model with a head): every sub-tree of params shaped
      {'conv': {'kernel'}, 'bn': {'bias'}} is a unit, its statistics at the same path in
      batch_stats ({'bn': {'mean', 'var'}}).
    epsilon: BatchNorm epsilon.

  Returns:
    New variables (numpy leaves) for the same model built with `fold_batchnorm=True`: units
    become {'conv': {'kernel', 'bias'}}, everything else is kept as is. 'batch_stats' is kept
    only for statistics not consumed by a unit; other collections are kept unchanged.

  Raises:
    ValueError: naming the unit whose statistics are missing, when a unit has none.
  """
  if 'params' not in variables:
    raise ValueError(f'fold_batchnorm needs variables with "params" (and "batch_stats"), got '
                     f'collections {sorted(variables)}')
  folded_count = 0

  def walk(params: Any, stats_node: Any, path: tuple[str, ...]) -> Any:
    nonlocal folded_count
    if _is_unit(params):
      unit_stats = stats_node.get('bn') if isinstance(stats_node, Mapping) else None
      if not isinstance(unit_stats, Mapping) or not {'mean', 'var'} <= set(unit_stats):
        raise ValueError(f'Unit {"/".join(path)} has no batch_stats {"/".join(path)}/bn/'
                         '{mean, var}; pass the full variables {"params", "batch_stats"}')
      kernel, bias = fold_unit(params['conv']['kernel'], params['bn']['bias'],
                               unit_stats['mean'], unit_stats['var'], epsilon)
      folded_count += 1
      stats_node.pop('bn')  # Consumed: what remains in batch_stats is returned.
      return {'conv': {'kernel': kernel, 'bias': bias}}
    if isinstance(params, Mapping):
      return {k: walk(v, stats_node.get(k, {}) if isinstance(stats_node, Mapping) else {},
                      path + (k,)) for k, v in params.items()}
    return params

  def mutable(tree: Any) -> Any:
    return {k: mutable(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree

  stats = mutable(variables.get('batch_stats', {}))  # A copy: consumed statistics are popped.
  out = {k: v for k, v in variables.items() if k not in ('params', 'batch_stats')}
  out['params'] = walk(variables['params'], stats, ())
  if folded_count == 0:
    raise ValueError('fold_batchnorm found no conv+BatchNorm unit ({"conv": {"kernel"}, "bn": '
                     '{"bias"}}) in params; are these InceptionV3 variables?')

  def prune(tree: Any) -> Any:
    if not isinstance(tree, Mapping):
      return tree
    kept = {k: prune(v) for k, v in tree.items()}
    return {k: v for k, v in kept.items() if not (isinstance(v, Mapping) and not v)}

  remaining = prune(stats)
  if remaining:
    out['batch_stats'] = remaining
  return out


def folded_model(model: model_lib.InceptionV3) -> model_lib.InceptionV3:
  """The same `InceptionV3` configuration with BatchNorm folded (for `fold_batchnorm` output)."""
  return model.clone(fold_batchnorm=True)
