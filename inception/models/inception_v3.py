"""InceptionV3 in Flax linen, layer for layer the Keras `applications.InceptionV3`.

The network is written as a list of blocks, as in Keras' `inception_v3.py`:

    stem    Conv 3x3/2 valid -> Conv 3x3 valid -> Conv 3x3 same -> MaxPool 3x3/2
            -> Conv 1x1 valid -> Conv 3x3 valid -> MaxPool 3x3/2
    mixed0..mixed2   InceptionA  (35x35 at 299 px; 256, 288, 288 channels)
    mixed3           InceptionB  (grid reduction to 17x17, 768 channels)
    mixed4..mixed7   InceptionC  (17x17, 768 channels; 7x7 factorised as 1x7 and 7x1)
    mixed8           InceptionD  (grid reduction to 8x8, 1280 channels)
    mixed9, mixed10  InceptionE  (8x8, 2048 channels)
    avg_pool         global average pool -> [N, 2048]
    predictions      Dense(1000) ImageNet logits (only with `include_top=True`)

Spatial sizes for the three input sizes used in the tests (height = width):

    endpoint   75 px   150 px   299 px   channels
    mixed2      7       16       35        288
    mixed7      3        7       17        768
    mixed10     1        3        8       2048

Every conv unit is Conv (no bias) -> BatchNorm (epsilon 1e-3, momentum 0.99, no scale)
-> ReLU, exactly as Keras' `conv2d_bn`. The branch average pools are 3x3 stride-1 `same` pools
that do *not* count the padding (TensorFlow's semantics; Flax's default counts it).

The 1x1 units of a block that read the block input run as one conv (kernels side by side, the
pool branch's conv moved before its average pool, which it commutes with): same parameters,
same values up to float rounding, a faster forward on CPU (`fuse_1x1`, `_Block.units_1x1`;
measurements in docs/performance.md).

Parameter tree (`params`), batch statistics (`batch_stats`: `mean`, `var`) mirror it:

    stem/conv2d_1a_3x3/{conv/kernel, bn/bias}      ... five stem units
    mixed0/branch1x1/{conv/kernel, bn/bias}
    mixed0/branch5x5_1/...                         unit names follow torchvision and TF-slim:
    mixed0/branch3x3dbl_3/...                      <branch>_<index in the branch>
    mixed0/branch_pool/...
    ...
    predictions/{kernel, bias}                      only with include_top

`UNIT_PATHS` lists the 94 conv units in Keras' creation order (the order of Keras' layer name
suffixes `conv2d_1..94` and of the units in the 2015 TensorFlow graph); weight converters use it.
`CONCAT_ORDER` names what fills each block's output channels, in order (the branch wiring).

Inputs are NHWC float images already preprocessed (see `data.preprocessing`); the model
does not guess the input range.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

BLOCKS = ('stem', 'mixed0', 'mixed1', 'mixed2', 'mixed3', 'mixed4', 'mixed5', 'mixed6',
          'mixed7', 'mixed8', 'mixed9', 'mixed10')
ENDPOINTS = BLOCKS + ('avg_pool', 'predictions')
MIN_IMAGE_SIZE = 75  # Smallest input for which every valid conv/pool keeps a spatial size >= 1.
BATCHNORM_EPSILON = 1e-3
BATCHNORM_MOMENTUM = 0.99
NUM_IMAGENET_CLASSES = 1000

# Output channels of each endpoint.
ENDPOINT_CHANNELS = {
    'stem': 192, 'mixed0': 256, 'mixed1': 288, 'mixed2': 288, 'mixed3': 768, 'mixed4': 768,
    'mixed5': 768, 'mixed6': 768, 'mixed7': 768, 'mixed8': 1280, 'mixed9': 2048,
    'mixed10': 2048, 'avg_pool': 2048, 'predictions': NUM_IMAGENET_CLASSES,
}


def _valid(size: int, kernel: int = 3, stride: int = 1) -> int:
  return (size - kernel) // stride + 1


def endpoint_spatial_size(image_size: int, endpoint: str) -> int:
  """Height (= width) of `endpoint`'s output for a square `image_size` input."""
  if endpoint not in ENDPOINTS:
    raise ValueError(f'Unknown endpoint {endpoint!r}; valid: {", ".join(ENDPOINTS)}')
  if endpoint in ('avg_pool', 'predictions'):
    return 1
  s = _valid(_valid(_valid(image_size, 3, 2)), 3, 2)  # conv 3x3/2, conv 3x3, [same], pool 3/2
  s = _valid(_valid(s), 3, 2)  # [conv 1x1], conv 3x3 valid, max pool 3x3/2
  if BLOCKS.index(endpoint) >= BLOCKS.index('mixed3'):
    s = _valid(s, 3, 2)
  if BLOCKS.index(endpoint) >= BLOCKS.index('mixed8'):
    s = _valid(s, 3, 2)
  return s


def endpoint_shape(image_size: int, endpoint: str) -> tuple[int, ...]:
  """Per-example output shape of `endpoint` (without batch dimension)."""
  if endpoint in ('avg_pool', 'predictions'):
    return (ENDPOINT_CHANNELS[endpoint],)
  s = endpoint_spatial_size(image_size, endpoint)
  return (s, s, ENDPOINT_CHANNELS[endpoint])

# What fills each block's output channels, in concatenation order: the unit that ends each
# branch, or 'max_pool' (the block input, max-pooled 3x3/2). Shared by the tests (the forward
# pass must follow it) and the tf2015 converter (the file's own TorchScript forward must).
CONCAT_ORDER = {
    **{b: ('branch1x1', 'branch5x5_2', 'branch3x3dbl_3', 'branch_pool')
       for b in ('mixed0', 'mixed1', 'mixed2')},
    'mixed3': ('branch3x3', 'branch3x3dbl_3', 'max_pool'),
    **{b: ('branch1x1', 'branch7x7_3', 'branch7x7dbl_5', 'branch_pool')
       for b in ('mixed4', 'mixed5', 'mixed6', 'mixed7')},
    'mixed8': ('branch3x3_2', 'branch7x7x3_4', 'max_pool'),
    **{b: ('branch1x1', 'branch3x3_2a', 'branch3x3_2b', 'branch3x3dbl_3a', 'branch3x3dbl_3b',
           'branch_pool') for b in ('mixed9', 'mixed10')},
}


class ConvBN(nn.Module):
  """Keras' `conv2d_bn`: Conv (no bias) -> BatchNorm (no scale) -> ReLU.

  With `fold_batchnorm` the unit is Conv (with bias) -> ReLU, params `conv/{kernel, bias}`:
  a frozen BatchNorm folded into the conv (see `inception.models.folding`).

  `conv_output` (keyword): this unit's conv output, bias included when folded, already computed
  by `_Block.units_1x1` from the unit's own `conv` params; then `x` is not used and only the
  BatchNorm (unless folded) and the ReLU run here.
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str = 'SAME'
  dtype: Any = jnp.float32
  fold_batchnorm: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, *, conv_output=None):
    if self.fold_batchnorm and train:
      raise ValueError('ConvBN with fold_batchnorm=True has no BatchNorm to train; '
                       'use the unfolded variables for train_blocks')
    if conv_output is not None:
      x = conv_output
    else:
      x = nn.Conv(self.features, self.kernel_size, self.strides, padding=self.padding,
                  use_bias=self.fold_batchnorm, dtype=self.dtype, name='conv')(x)
    if not self.fold_batchnorm:
      x = nn.BatchNorm(use_running_average=not train, momentum=BATCHNORM_MOMENTUM,
                       epsilon=BATCHNORM_EPSILON, use_scale=False, dtype=self.dtype,
                       name='bn')(x)
    return nn.relu(x)


def avg_pool_3x3_same(x):
  """3x3 stride-1 `same` average pool that excludes the padding from the count (as TF)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding='SAME', count_include_pad=False)


def max_pool_3x3(x, strides: int = 2, padding: str = 'VALID'):
  return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=padding)


class _Block(nn.Module):
  """Base of the mixed blocks: `unit(...)` creates a named ConvBN in call order.

  `fuse_1x1`: `units_1x1` computes the 1x1 units that read the block input as one conv.
  """
  dtype: Any = jnp.float32
  fold_batchnorm: bool = False
  fuse_1x1: bool = True

  def unit(self, name, x, features, kernel, train, strides=1, padding='SAME'):
    return ConvBN(features, kernel, (strides, strides), padding, dtype=self.dtype,
                  fold_batchnorm=self.fold_batchnorm, name=name)(x, train)

  def units_1x1(self, x, units, train, pooled=()):
    """The block's 1x1 units that read `x` (and `avg_pool_3x3_same(x)`), as one conv.

    Args:
      x: the block input [N, h, w, C].
      units: (name, features) of stride-1 1x1 units reading `x`.
      pooled: (name, features) of 1x1 units reading `avg_pool_3x3_same(x)`.
      train: as for `unit`.

    Returns:
      The units' outputs, in the order `units` + `pooled`: the same parameters and values as
      calling each unit on its input. With `fuse_1x1` the kernels are concatenated along the
      output channels, so one matmul with N = the sum of the units' features replaces several
      narrow ones (faster on CPU: docs/performance.md); a pooled unit's conv runs
      before the pool (a 1x1 conv and an average pool are both linear, so they commute up to
      float rounding), so its pool averages the unit's few output channels instead of C.
    """
    specs = [(name, features, False) for name, features in units]
    specs += [(name, features, True) for name, features in pooled]
    if not self.fuse_1x1 or self.is_initializing():  # Init creates the params unit by unit.
      return [self.unit(name, avg_pool_3x3_same(x) if is_pooled else x, features, (1, 1), train)
              for name, features, is_pooled in specs]
    params = self.variables.get('params', {})
    for name, _, _ in specs:
      if name not in params:
        raise ValueError(f'{self.name}/{name} has no params; initialise the model (or load '
                         'weights) before applying it')
    kernel = jnp.concatenate([params[name]['conv']['kernel'] for name, _, _ in specs], axis=-1)
    x_cast, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    z = jax.lax.conv_general_dilated(x_cast, kernel, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    outputs, start = [], 0
    for name, features, is_pooled in specs:
      conv_output = z[..., start:start + features]
      start += features
      if is_pooled:
        conv_output = avg_pool_3x3_same(conv_output)
      if self.fold_batchnorm:
        conv_output = conv_output + params[name]['conv']['bias'].astype(self.dtype)
      unit = ConvBN(features, (1, 1), dtype=self.dtype, fold_batchnorm=self.fold_batchnorm,
                    name=name)
      outputs.append(unit(None, train, conv_output=conv_output))
    return outputs


class InceptionA(_Block):
  """mixed0-2 (35x35): 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b1, b5, b3, bp = self.units_1x1(
        x, [('branch1x1', 64), ('branch5x5_1', 48), ('branch3x3dbl_1', 64)], train,
        pooled=[('branch_pool', self.pool_features)])
    b5 = self.unit('branch5x5_2', b5, 64, (5, 5), train)
    b3 = self.unit('branch3x3dbl_2', b3, 96, (3, 3), train)
    b3 = self.unit('branch3x3dbl_3', b3, 96, (3, 3), train)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """mixed3 (35 -> 17): 3x3/2 | 1x1->3x3->3x3/2 | maxpool 3x3/2."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    b3 = self.unit('branch3x3', x, 384, (3, 3), train, strides=2, padding='VALID')
    bd = self.unit('branch3x3dbl_1', x, 64, (1, 1), train)
    bd = self.unit('branch3x3dbl_2', bd, 96, (3, 3), train)
    bd = self.unit('branch3x3dbl_3', bd, 96, (3, 3), train, strides=2, padding='VALID')
    return jnp.concatenate([b3, bd, max_pool_3x3(x)], axis=-1)


class InceptionC(_Block):
  """mixed4-7 (17x17): 1x1 | 1x1->1x7->7x1 | 1x1->7x1->1x7->7x1->1x7 | avgpool->1x1."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = self.channels_7x7
    b1, b7, bd, bp = self.units_1x1(
        x, [('branch1x1', 192), ('branch7x7_1', c), ('branch7x7dbl_1', c)], train,
        pooled=[('branch_pool', 192)])
    b7 = self.unit('branch7x7_2', b7, c, (1, 7), train)
    b7 = self.unit('branch7x7_3', b7, 192, (7, 1), train)
    bd = self.unit('branch7x7dbl_2', bd, c, (7, 1), train)
    bd = self.unit('branch7x7dbl_3', bd, c, (1, 7), train)
    bd = self.unit('branch7x7dbl_4', bd, c, (7, 1), train)
    bd = self.unit('branch7x7dbl_5', bd, 192, (1, 7), train)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """mixed8 (17 -> 8): 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool 3x3/2."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    b3, b7 = self.units_1x1(x, [('branch3x3_1', 192), ('branch7x7x3_1', 192)], train)
    b3 = self.unit('branch3x3_2', b3, 320, (3, 3), train, strides=2, padding='VALID')
    b7 = self.unit('branch7x7x3_2', b7, 192, (1, 7), train)
    b7 = self.unit('branch7x7x3_3', b7, 192, (7, 1), train)
    b7 = self.unit('branch7x7x3_4', b7, 192, (3, 3), train, strides=2, padding='VALID')
    return jnp.concatenate([b3, b7, max_pool_3x3(x)], axis=-1)


class InceptionE(_Block):
  """mixed9-10 (8x8): 1x1 | 1x1->(1x3, 3x1) | 1x1->3x3->(1x3, 3x1) | pool->1x1.

  `pool='max'` reproduces the 2015 TensorFlow graph, whose last block (mixed10) uses a 3x3
  stride-1 max pool here where Keras uses an average pool.
  """
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.pool not in ('avg', 'max'):
      raise ValueError(f'InceptionE.pool must be "avg" or "max", got {self.pool!r}')
    units = [('branch1x1', 320), ('branch3x3_1', 384), ('branch3x3dbl_1', 448)]
    if self.pool == 'avg':
      b1, b3, bd, bp = self.units_1x1(x, units, train, pooled=[('branch_pool', 192)])
    else:  # A max pool does not commute with the conv: its unit runs on its own.
      b1, b3, bd = self.units_1x1(x, units, train)
      bp = self.unit('branch_pool', max_pool_3x3(x, strides=1, padding='SAME'), 192, (1, 1),
                     train)
    b3 = jnp.concatenate([self.unit('branch3x3_2a', b3, 384, (1, 3), train),
                          self.unit('branch3x3_2b', b3, 384, (3, 1), train)], axis=-1)
    bd = self.unit('branch3x3dbl_2', bd, 384, (3, 3), train)
    bd = jnp.concatenate([self.unit('branch3x3dbl_3a', bd, 384, (1, 3), train),
                          self.unit('branch3x3dbl_3b', bd, 384, (3, 1), train)], axis=-1)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Stem(_Block):
  """Stem up to the 35x35 grid: 192 channels."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.unit('conv2d_1a_3x3', x, 32, (3, 3), train, strides=2, padding='VALID')
    x = self.unit('conv2d_2a_3x3', x, 32, (3, 3), train, padding='VALID')
    x = self.unit('conv2d_2b_3x3', x, 64, (3, 3), train)
    x = max_pool_3x3(x)
    x = self.unit('conv2d_3b_1x1', x, 80, (1, 1), train, padding='VALID')
    x = self.unit('conv2d_4a_3x3', x, 192, (3, 3), train, padding='VALID')
    return max_pool_3x3(x)


def _block_specs(mixed10_pool: str) -> list[tuple[str, type[_Block], dict]]:
  """The architecture as a list: (name, block class, block arguments)."""
  return [
      ('stem', Stem, {}),
      ('mixed0', InceptionA, {'pool_features': 32}),
      ('mixed1', InceptionA, {'pool_features': 64}),
      ('mixed2', InceptionA, {'pool_features': 64}),
      ('mixed3', InceptionB, {}),
      ('mixed4', InceptionC, {'channels_7x7': 128}),
      ('mixed5', InceptionC, {'channels_7x7': 160}),
      ('mixed6', InceptionC, {'channels_7x7': 160}),
      ('mixed7', InceptionC, {'channels_7x7': 192}),
      ('mixed8', InceptionD, {}),
      ('mixed9', InceptionE, {'pool': 'avg'}),
      ('mixed10', InceptionE, {'pool': mixed10_pool}),
  ]


class InceptionV3(nn.Module):
  """InceptionV3 backbone that stops at `stop_at` and builds nothing after it.

  Attributes:
    stop_at: last endpoint to compute, one of `ENDPOINTS`. 'predictions' needs include_top.
    include_top: build the ImageNet classifier (`predictions`, 1000 logits, no softmax).
    mixed10_pool: 'avg' (Keras) or 'max' (the 2015 TensorFlow graph; see `InceptionE`).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
    fold_batchnorm: every unit is Conv (with bias) -> ReLU, for variables made by
      `inception.models.folding.fold_batchnorm` (frozen backbone; no `batch_stats`, no train_blocks).
    fuse_1x1: compute each block's 1x1 units that read the block input as one conv
      (`_Block.units_1x1`); same parameters, same values up to float rounding, faster.

  Call: `model.apply(variables, images, train_blocks=())` with images [N, H, W, 3] float,
  H, W >= 75. Returns the `stop_at` endpoint: [N, h, w, C] for blocks, [N, 2048] for avg_pool,
  [N, 1000] logits for predictions. `train_blocks` names the blocks (from `BLOCKS`) whose
  BatchNorm normalises with batch statistics and updates its running averages (needs
  `mutable=['batch_stats']`); every other block uses its running statistics. To read several
  endpoints in one pass use `apply_endpoints`.
  """
  stop_at: str = 'mixed10'
  include_top: bool = False
  mixed10_pool: str = 'avg'
  dtype: Any = jnp.float32
  fold_batchnorm: bool = False
  fuse_1x1: bool = True

  @nn.compact
  def __call__(self, x, train_blocks: Collection[str] | bool = ()):
    if self.stop_at not in ENDPOINTS:
      raise ValueError(f'InceptionV3.stop_at={self.stop_at!r} is not an endpoint; valid: '
                       f'{", ".join(ENDPOINTS)}')
    if self.stop_at == 'predictions' and not self.include_top:
      raise ValueError('InceptionV3.stop_at="predictions" needs include_top=True')
    if train_blocks is True:
      train_blocks = BLOCKS
    elif train_blocks is False:
      train_blocks = ()
    unknown = set(train_blocks) - set(BLOCKS)
    if unknown:
      raise ValueError(f'train_blocks has unknown blocks {sorted(unknown)}; valid: {BLOCKS}')
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'InceptionV3 expects images [N, H, W, 3], got shape {x.shape}')
    if min(x.shape[1:3]) < MIN_IMAGE_SIZE:
      raise ValueError(f'InceptionV3 needs images of at least {MIN_IMAGE_SIZE}x'
                       f'{MIN_IMAGE_SIZE} pixels, got {x.shape[1]}x{x.shape[2]}')
    x = x.astype(self.dtype)
    for name, block, kwargs in _block_specs(self.mixed10_pool):
      x = block(dtype=self.dtype, fold_batchnorm=self.fold_batchnorm, fuse_1x1=self.fuse_1x1,
                name=name, **kwargs)(x, name in train_blocks)
      if name == self.stop_at:
        return x
    x = jnp.mean(x, axis=(1, 2))
    self.sow('intermediates', 'avg_pool', x)
    if self.stop_at == 'avg_pool':
      return x
    return nn.Dense(NUM_IMAGENET_CLASSES, dtype=self.dtype, name='predictions')(x)


def apply_endpoints(model: InceptionV3, variables, images, **kwargs) -> dict[str, Any]:
  """Runs `model` and returns every endpoint it computes, {name: array}, up to `stop_at`."""
  def is_block(module, method_name):
    return method_name == '__call__' and module.name in BLOCKS
  _, state = model.apply(variables, images, capture_intermediates=is_block,
                         mutable=['intermediates'], **kwargs)
  captured = state['intermediates']
  found = {name: captured[name]['__call__'][0] for name in BLOCKS if name in captured}
  if 'avg_pool' in captured:
    found['avg_pool'] = captured['avg_pool'][0]
  return found


def unit_paths() -> list[tuple[str, str]]:
  """The 94 conv units as (block, unit) in Keras' creation order."""
  order = {
      'stem': ['conv2d_1a_3x3', 'conv2d_2a_3x3', 'conv2d_2b_3x3', 'conv2d_3b_1x1',
               'conv2d_4a_3x3'],
      'A': ['branch1x1', 'branch5x5_1', 'branch5x5_2', 'branch3x3dbl_1', 'branch3x3dbl_2',
            'branch3x3dbl_3', 'branch_pool'],
      'B': ['branch3x3', 'branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3'],
      'C': ['branch1x1', 'branch7x7_1', 'branch7x7_2', 'branch7x7_3', 'branch7x7dbl_1',
            'branch7x7dbl_2', 'branch7x7dbl_3', 'branch7x7dbl_4', 'branch7x7dbl_5',
            'branch_pool'],
      'D': ['branch3x3_1', 'branch3x3_2', 'branch7x7x3_1', 'branch7x7x3_2', 'branch7x7x3_3',
            'branch7x7x3_4'],
      'E': ['branch1x1', 'branch3x3_1', 'branch3x3_2a', 'branch3x3_2b', 'branch3x3dbl_1',
            'branch3x3dbl_2', 'branch3x3dbl_3a', 'branch3x3dbl_3b', 'branch_pool'],
  }
  kinds = {Stem: 'stem', InceptionA: 'A', InceptionB: 'B', InceptionC: 'C', InceptionD: 'D',
           InceptionE: 'E'}
  return [(name, unit) for name, block, _ in _block_specs('avg') for unit in order[kinds[block]]]


UNIT_PATHS: Sequence[tuple[str, str]] = tuple(unit_paths())
assert len(UNIT_PATHS) == 94
