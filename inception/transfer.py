"""The transfer model: a registered backbone (InceptionV3 by default; `inception.backbones`)
cut at an endpoint + a small classifier head.

    backbone  backbones.get(name).build(stop_at=cut, **variant)   [N, H, W, 3] -> [N, h, w, C]
    head      flatten | gap -> Dense(units, relu) -> Dropout(rate) -> Dense(outputs)

With 2 classes the head has ONE output (a logit; Keras' Dense(1, sigmoid) + binary
cross-entropy, with the sigmoid folded into the loss for stability); with K > 2 classes it has
K logits (softmax cross-entropy). Parameter paths: 'backbone/<block>/<unit>/{conv/kernel,bn/bias}',
'head/dense/{kernel,bias}', 'head/logits/{kernel,bias}'.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inception import backbones
from inception import checks

HEADS = ('flatten', 'gap')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def global_pool(x):
  """The 'gap' head's global average pool: [N, h, w, C] -> [N, C], in x's dtype."""
  return jnp.mean(x, axis=(1, 2))


def num_outputs(num_classes: int) -> int:
  """1 logit for binary problems (sigmoid), else one per class (softmax)."""
  return 1 if num_classes == 2 else num_classes


class Head(nn.Module):
  """flatten|gap -> Dense(units, relu) -> Dropout(rate) -> Dense(outputs); float32 logits."""
  kind: str = 'flatten'
  units: int = 1024
  dropout: float = 0.2
  outputs: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.kind == 'flatten':
      x = x.reshape(x.shape[0], -1)
    elif self.kind == 'gap':
      x = global_pool(x) if x.ndim == 4 else x  # [N, C]: pooled already (the feature cache).
    else:
      raise ValueError(f'model.head={self.kind!r} is unknown; valid: {", ".join(HEADS)}')
    if self.units:
      x = nn.relu(nn.Dense(self.units, dtype=self.dtype, name='dense')(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.outputs, dtype=self.dtype, name='logits')(x).astype(jnp.float32)


def _backbone(model: 'TransferModel') -> nn.Module:
  """`model`'s backbone module, named 'backbone' (create it inside a compact method)."""
  return backbones.get(model.backbone).build(stop_at=model.cut, dtype=model.dtype,
                                             name='backbone', **dict(model.variant))


class TransferModel(nn.Module):
  """Backbone (`cut` endpoint) + `Head`. Call: (images, train=..., train_blocks=...) -> logits.

  images: [N, H, W, 3] preprocessed floats. Returns float32 logits [N, outputs].
  `train` enables dropout; `train_blocks` (a subset of the backbone's `blocks`) are the backbone
  blocks whose BatchNorm uses batch statistics and updates its running averages. `variant`:
  the backbone's build keywords as (key, value) pairs (from the weights' provenance).
  """
  cut: str = 'mixed7'
  head: str = 'flatten'
  dense_units: int = 1024
  dropout: float = 0.2
  outputs: int = 1
  backbone: str = 'inception_v3'
  variant: tuple[tuple[str, Any], ...] = ()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, train_blocks: Collection[str] = ()):
    feats = _backbone(self)(x, tuple(train_blocks))
    return Head(self.head, self.dense_units, self.dropout, self.outputs, self.dtype,
                name='head')(feats, train)


class BackboneOnly(nn.Module):
  """`TransferModel`'s backbone alone, under the same name: [N, H, W, 3] -> features [N, h, w, C];
  with `pooled`, their `global_pool` [N, C] (what a 'gap' head computes first).

  Applied with a TransferModel's full variables (the head's are unused).
  """
  model: TransferModel
  pooled: bool = False

  @nn.compact
  def __call__(self, x):
    feats = _backbone(self.model)(x, ())
    return global_pool(feats) if self.pooled else feats


class HeadOnly(nn.Module):
  """`TransferModel`'s head alone on features [N, h, w, C] -> float32 logits [N, outputs]; a
  'gap' head also takes them pooled, [N, C] (`BackboneOnly(pooled=True)`).

  Named 'head' under the root as in TransferModel, so with the full variables it uses the same
  params AND the same dropout masks (flax folds the module path into the dropout key). The
  features are cast to the model dtype first: the cache serves them as float32.
  """
  model: TransferModel

  @nn.compact
  def __call__(self, feats, train: bool = False):
    m = self.model
    return Head(m.head, m.dense_units, m.dropout, m.outputs, m.dtype,
                name='head')(feats.astype(m.dtype), train)


def from_config(config: Any, num_classes: int, variant: dict | None = None) -> TransferModel:
  """TransferModel for `config.model` and a dataset with `num_classes` classes; `variant`: the
  backbone's build keywords (a weights provenance's 'variant')."""
  m = config.model
  return TransferModel(cut=m.cut, head=m.head, dense_units=m.dense_units, dropout=m.dropout,
                       outputs=num_outputs(num_classes), backbone=m.backbone,
                       variant=tuple(sorted((variant or {}).items())), dtype=DTYPES[m.dtype])


def init_variables(model: TransferModel, image_size: int, seed: int) -> dict:
  """Random float32 variables {'params', 'batch_stats'} with Keras' initialisers.

  Kernels: glorot_uniform (Keras' default for Conv2D and Dense); biases: zeros; BatchNorm
  mean 0, var 1. Filled with numpy from the shapes of `jax.eval_shape(model.init)`, so no
  forward pass is compiled or run; each leaf's stream is seeded by (seed, its path), so adding
  layers does not change the others' values.
  """
  shapes = variable_shapes(model, image_size)

  def fill(path, leaf):
    name = '/'.join(str(getattr(p, 'key', p)) for p in path)
    shape = tuple(leaf.shape)
    if name.endswith('kernel'):
      receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
      fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
      limit = np.sqrt(6.0 / (fan_in + fan_out))
      rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
      return rng.uniform(-limit, limit, shape).astype(np.float32)
    if name.endswith('/var'):
      return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)  # biases and BatchNorm means

  return jax.tree_util.tree_map_with_path(fill, shapes)


def variable_shapes(model: TransferModel, image_size: int) -> dict:
  """{'params', 'batch_stats'} of jax.ShapeDtypeStruct (float32): the tree a checkpoint of
  `model` at `image_size` px holds, without computing any value."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  return {'params': shapes['params'], 'batch_stats': shapes.get('batch_stats', {})}


def load_pretrained(config: Any, log=print) -> tuple[dict | None, dict]:
  """The pretrained backbone variables of `config.model` (weights, cut; None for 'random') and
  their provenance ('weights', 'source', 'sha256', 'variant': build the model with it)."""
  m = config.model
  return backbones.get(m.backbone).load_pretrained(m.weights, m.cut, log)


def validate_config(config: Any) -> None:
  """Checks `config.model` (and `data.image_size` against the backbone), naming the key."""
  m = config.model
  backbone = backbones.get(m.backbone)
  checks.number('data.image_size', config.data.image_size, lo=backbone.min_image_size,
                integer=True)
  checks.choice('model.cut', m.cut, backbone.endpoints)
  backbone.check_weights(m.weights)
  checks.choice('model.head', m.head, HEADS)
  checks.number('model.dense_units', m.dense_units, lo=0, integer=True)
  checks.number('model.dropout', m.dropout, lo=0, hi=1, hi_open=True)
  checks.choice('model.dtype', m.dtype, tuple(DTYPES))
  cut_index = backbone.endpoints.index(m.cut)
  for block in m.batchnorm_train_blocks:
    checks.choice('model.batchnorm_train_blocks[]', block, backbone.blocks)
    if block in backbone.endpoints and backbone.endpoints.index(block) > cut_index:
      valid = [b for b in backbone.blocks if backbone.endpoints.index(b) <= cut_index]
      raise ValueError(f'config.model.batchnorm_train_blocks has {block!r}, after the cut '
                       f'model.cut={m.cut!r}; valid: {", ".join(valid)}')


def replace_backbone(variables: dict, backbone: dict | None, weights: str = '') -> dict:
  """`variables` with the backbone subtrees replaced by `backbone` (float32); shapes must match."""
  if backbone is None:
    return variables
  out = {}
  for col in ('params', 'batch_stats'):
    mine = dict(variables[col])
    theirs = backbone.get(col, {})
    want = jax.tree.map(np.shape, mine['backbone'])
    got = jax.tree.map(np.shape, theirs)
    if want != got:
      raise ValueError(f'Weights {weights!r} do not fit the backbone in collection {col!r} '
                       f'(expected blocks {sorted(want)}, got {sorted(got)}); check '
                       f'model.weights / model.cut or re-fetch with `python -m inception.weights '
                       f'fetch`.')
    mine['backbone'] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), theirs)
    out[col] = mine
  return out
