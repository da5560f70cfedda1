"""InceptionV3 in Flax linen, layer for layer the Keras `applications.InceptionV3`.

The network is written once, as data: `architecture()` lists the blocks, each a tuple of
branches of conv units and pools (`Unit`, `Pool`, `Split`), as Keras' `inception_v3.py` lists
its `conv2d_bn` calls. One module, `Block`, runs any block; `UNIT_PATHS` and `CONCAT_ORDER` are
read from the same list.

    stem    Conv 3x3/2 valid -> Conv 3x3 valid -> Conv 3x3 same -> MaxPool 3x3/2
            -> Conv 1x1 valid -> Conv 3x3 valid -> MaxPool 3x3/2
    mixed0..mixed2   inception_a  (35x35 at 299 px; 256, 288, 288 channels)
    mixed3           inception_b  (grid reduction to 17x17, 768 channels)
    mixed4..mixed7   inception_c  (17x17, 768 channels; 7x7 factorised as 1x7 and 7x1)
    mixed8           inception_d  (grid reduction to 8x8, 1280 channels)
    mixed9, mixed10  inception_e  (8x8, 2048 channels)
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
same values up to float rounding, a faster forward on CPU (`fuse_1x1`, `Block.units_1x1`;
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
suffixes `conv2d_1..94` and of the units in the 2015 TensorFlow graph: the architecture's order,
branch by branch); weight converters use it. `CONCAT_ORDER` names what fills each mixed block's
output channels, in order (the branch wiring).

Inputs are NHWC float images already preprocessed (see `data.preprocessing`); the model
does not guess the input range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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


# ------------------------------------------------------------------ the architecture, as data
# A block is a tuple of branches that all read the block input; its output concatenates the
# branches' outputs in order. A branch is a tuple of steps run in sequence: a conv `Unit`, a
# `Pool`, or (last) a `Split` of units that read the same input, their outputs concatenated.
# `architecture()` lists the blocks; the forward pass (`Block`), `UNIT_PATHS` and
# `CONCAT_ORDER` are read from it.


@dataclasses.dataclass(frozen=True)
class Unit:
  """A conv unit (`ConvBN`, Keras' `conv2d_bn`): its name in the block, output channels,
  kernel (height, width), stride and padding."""
  name: str
  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: str = 'SAME'


@dataclasses.dataclass(frozen=True)
class Pool:
  """A 3x3 pool: 'avg' (stride 1, `same`, padding not counted: `avg_pool_3x3_same`) or 'max'
  (`max_pool_3x3`)."""
  kind: str
  strides: int = 1
  padding: str = 'SAME'

  @property
  def name(self) -> str:
    return f'{self.kind}_pool'


@dataclasses.dataclass(frozen=True)
class Split:
  """Units that read the same input, side by side: their outputs concatenated in order."""
  units: tuple[Unit, ...]


Step = Unit | Pool | Split
Branch = tuple[Step, ...]

AVG_POOL = Pool('avg')
MAX_POOL = Pool('max', strides=2, padding='VALID')  # The stem's and the grid reductions'.
MAX_POOL_SAME = Pool('max')  # mixed10's pool branch in the 2015 TensorFlow graph.


def stem() -> tuple[Branch, ...]:
  """Up to the 35x35 grid (at 299 px): 192 channels."""
  return ((Unit('conv2d_1a_3x3', 32, (3, 3), strides=2, padding='VALID'),
           Unit('conv2d_2a_3x3', 32, (3, 3), padding='VALID'),
           Unit('conv2d_2b_3x3', 64, (3, 3)),
           MAX_POOL,
           Unit('conv2d_3b_1x1', 80, (1, 1), padding='VALID'),
           Unit('conv2d_4a_3x3', 192, (3, 3), padding='VALID'),
           MAX_POOL),)


def inception_a(pool_features: int) -> tuple[Branch, ...]:
  """mixed0-2 (35x35): 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1."""
  return ((Unit('branch1x1', 64, (1, 1)),),
          (Unit('branch5x5_1', 48, (1, 1)), Unit('branch5x5_2', 64, (5, 5))),
          (Unit('branch3x3dbl_1', 64, (1, 1)), Unit('branch3x3dbl_2', 96, (3, 3)),
           Unit('branch3x3dbl_3', 96, (3, 3))),
          (AVG_POOL, Unit('branch_pool', pool_features, (1, 1))))


def inception_b() -> tuple[Branch, ...]:
  """mixed3 (35 -> 17): 3x3/2 | 1x1->3x3->3x3/2 | maxpool 3x3/2."""
  return ((Unit('branch3x3', 384, (3, 3), strides=2, padding='VALID'),),
          (Unit('branch3x3dbl_1', 64, (1, 1)), Unit('branch3x3dbl_2', 96, (3, 3)),
           Unit('branch3x3dbl_3', 96, (3, 3), strides=2, padding='VALID')),
          (MAX_POOL,))


def inception_c(channels_7x7: int) -> tuple[Branch, ...]:
  """mixed4-7 (17x17): 1x1 | 1x1->1x7->7x1 | 1x1->7x1->1x7->7x1->1x7 | avgpool->1x1."""
  c = channels_7x7
  return ((Unit('branch1x1', 192, (1, 1)),),
          (Unit('branch7x7_1', c, (1, 1)), Unit('branch7x7_2', c, (1, 7)),
           Unit('branch7x7_3', 192, (7, 1))),
          (Unit('branch7x7dbl_1', c, (1, 1)), Unit('branch7x7dbl_2', c, (7, 1)),
           Unit('branch7x7dbl_3', c, (1, 7)), Unit('branch7x7dbl_4', c, (7, 1)),
           Unit('branch7x7dbl_5', 192, (1, 7))),
          (AVG_POOL, Unit('branch_pool', 192, (1, 1))))


def inception_d() -> tuple[Branch, ...]:
  """mixed8 (17 -> 8): 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool 3x3/2."""
  return ((Unit('branch3x3_1', 192, (1, 1)),
           Unit('branch3x3_2', 320, (3, 3), strides=2, padding='VALID')),
          (Unit('branch7x7x3_1', 192, (1, 1)), Unit('branch7x7x3_2', 192, (1, 7)),
           Unit('branch7x7x3_3', 192, (7, 1)),
           Unit('branch7x7x3_4', 192, (3, 3), strides=2, padding='VALID')),
          (MAX_POOL,))


def inception_e(pool: str) -> tuple[Branch, ...]:
  """mixed9-10 (8x8): 1x1 | 1x1->(1x3, 3x1) | 1x1->3x3->(1x3, 3x1) | pool->1x1.

  `pool='max'` reproduces the 2015 TensorFlow graph, whose last block (mixed10) uses a 3x3
  stride-1 max pool here where Keras uses an average pool.
  """
  return ((Unit('branch1x1', 320, (1, 1)),),
          (Unit('branch3x3_1', 384, (1, 1)),
           Split((Unit('branch3x3_2a', 384, (1, 3)), Unit('branch3x3_2b', 384, (3, 1))))),
          (Unit('branch3x3dbl_1', 448, (1, 1)), Unit('branch3x3dbl_2', 384, (3, 3)),
           Split((Unit('branch3x3dbl_3a', 384, (1, 3)), Unit('branch3x3dbl_3b', 384, (3, 1))))),
          (AVG_POOL if pool == 'avg' else MAX_POOL_SAME, Unit('branch_pool', 192, (1, 1))))


def architecture(mixed10_pool: str = 'avg') -> tuple[tuple[str, tuple[Branch, ...]], ...]:
  """InceptionV3 as a list of (block name, branches), input to output."""
  if mixed10_pool not in ('avg', 'max'):
    raise ValueError(f'InceptionV3.mixed10_pool must be "avg" or "max", got {mixed10_pool!r}')
  return (('stem', stem()),
          ('mixed0', inception_a(pool_features=32)),
          ('mixed1', inception_a(pool_features=64)),
          ('mixed2', inception_a(pool_features=64)),
          ('mixed3', inception_b()),
          ('mixed4', inception_c(channels_7x7=128)),
          ('mixed5', inception_c(channels_7x7=160)),
          ('mixed6', inception_c(channels_7x7=160)),
          ('mixed7', inception_c(channels_7x7=192)),
          ('mixed8', inception_d()),
          ('mixed9', inception_e(pool='avg')),
          ('mixed10', inception_e(pool=mixed10_pool)))


def _units(step: Step) -> tuple[Unit, ...]:
  return step.units if isinstance(step, Split) else (step,) if isinstance(step, Unit) else ()


def _outputs(branch: Branch) -> tuple[str, ...]:
  """What the branch's output channels hold: its last unit(s), or the pooled block input."""
  return tuple(u.name for u in _units(branch[-1])) or (branch[-1].name,)


BLOCKS = tuple(name for name, _ in architecture())
ENDPOINTS = BLOCKS + ('avg_pool', 'predictions')
# The conv units as (block, unit) in Keras' creation order: branch by branch, each in sequence
# (the order of Keras' layer name suffixes `conv2d_1..94` and of the 2015 TensorFlow graph's
# units); the weight converters pair the files' layers with it.
UNIT_PATHS: Sequence[tuple[str, str]] = tuple(
    (name, unit.name) for name, branches in architecture() for branch in branches
    for step in branch for unit in _units(step))
assert len(UNIT_PATHS) == 94
# What fills each mixed block's output channels, in concatenation order: the unit that ends each
# branch, or 'max_pool' (the block input, max-pooled 3x3/2). Shared by the tests (the forward
# pass must follow it) and the tf2015 converter (the file's own TorchScript forward must).
CONCAT_ORDER = {name: tuple(o for branch in branches for o in _outputs(branch))
                for name, branches in architecture() if name != 'stem'}


class ConvBN(nn.Module):
  """Keras' `conv2d_bn`: Conv (no bias) -> BatchNorm (no scale) -> ReLU.

  With `fold_batchnorm` the unit is Conv (with bias) -> ReLU, params `conv/{kernel, bias}`:
  a frozen BatchNorm folded into the conv (see `inception.models.folding`).

  `conv_output` (keyword): this unit's conv output, bias included when folded, already computed
  by `Block.units_1x1` from the unit's own `conv` params; then `x` is not used and only the
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


def _head(branch: Branch) -> Branch:
  """The steps of `branch` that read the block input: up to its first unit (a leading pool and
  that unit, or a lone pool)."""
  return branch[:2] if isinstance(branch[0], Pool) and len(branch) > 1 else branch[:1]


def _fusable(head: Branch) -> bool:
  """Whether `head` is a stride-1 1x1 unit on the block input or on its average pool."""
  unit = head[-1]
  return (head[:-1] in ((), (AVG_POOL,)) and isinstance(unit, Unit)
          and (unit.kernel, unit.strides, unit.padding) == ((1, 1), 1, 'SAME'))


class Block(nn.Module):
  """One block of `architecture()`: its branches on the block input, outputs concatenated.

  The branches' heads (`_head`, what reads the block input) run first, then the rest of each
  branch. `fuse_1x1`: when two or more heads are 1x1 units (`_fusable`), `units_1x1` computes
  them as one conv.
  """
  branches: tuple[Branch, ...]
  dtype: Any = jnp.float32
  fold_batchnorm: bool = False
  fuse_1x1: bool = True

  def unit(self, unit: Unit, x, train):
    return ConvBN(unit.features, unit.kernel, (unit.strides, unit.strides), unit.padding,
                  dtype=self.dtype, fold_batchnorm=self.fold_batchnorm, name=unit.name)(x, train)

  def run(self, steps: Branch, x, train):
    """`steps` in sequence on `x`."""
    for step in steps:
      if isinstance(step, Unit):
        x = self.unit(step, x, train)
      elif isinstance(step, Split):
        x = jnp.concatenate([self.unit(u, x, train) for u in step.units], axis=-1)
      elif step.kind == 'avg':
        x = avg_pool_3x3_same(x)
      else:
        x = max_pool_3x3(x, step.strides, step.padding)
    return x

  @nn.compact
  def __call__(self, x, train: bool = False):
    heads = [_head(branch) for branch in self.branches]
    fused = [i for i, head in enumerate(heads) if _fusable(head)]
    if len(fused) < 2 or not self.fuse_1x1 or self.is_initializing():  # Init: unit by unit.
      fused = []
    starts = dict(zip(fused, self.units_1x1(x, [heads[i] for i in fused], train)))
    for i, head in enumerate(heads):
      if i not in starts:
        starts[i] = self.run(head, x, train)
    outputs = [self.run(branch[len(head):], starts[i], train)
               for i, (branch, head) in enumerate(zip(self.branches, heads))]
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)

  def units_1x1(self, x, heads, train):
    """Branch heads that are 1x1 units reading `x` (or `avg_pool_3x3_same(x)`), as one conv.

    Args:
      x: the block input [N, h, w, C].
      heads: `_fusable` heads: (unit,) or (AVG_POOL, unit), a stride-1 1x1 unit each.
      train: as for `unit`.

    Returns:
      The heads' outputs, in the order of `heads`: the same parameters and values as running
      each head on `x` (`run`, as init and `fuse_1x1=False` do). The kernels are concatenated
      along the output channels, so one matmul with N = the sum of the units' features replaces
      several narrow ones (faster on CPU: docs/performance.md); a pooled unit's conv runs before
      the pool (a 1x1 conv and an average pool are both linear, so they commute up to float
      rounding), so its pool averages the unit's few output channels instead of C.
    """
    if not heads:
      return []
    units = [(head[-1], len(head) == 2) for head in heads]  # (unit, reads the pool)
    params = self.variables.get('params', {})
    for unit, _ in units:
      if unit.name not in params:
        raise ValueError(f'{self.name}/{unit.name} has no params; initialise the model (or '
                         'load weights) before applying it')
    kernel = jnp.concatenate([params[u.name]['conv']['kernel'] for u, _ in units], axis=-1)
    x_cast, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    z = jax.lax.conv_general_dilated(x_cast, kernel, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    outputs, start = [], 0
    for unit, pooled in units:
      conv_output = z[..., start:start + unit.features]
      start += unit.features
      if pooled:
        conv_output = avg_pool_3x3_same(conv_output)
      if self.fold_batchnorm:
        conv_output = conv_output + params[unit.name]['conv']['bias'].astype(self.dtype)
      module = ConvBN(unit.features, (1, 1), dtype=self.dtype,
                      fold_batchnorm=self.fold_batchnorm, name=unit.name)
      outputs.append(module(None, train, conv_output=conv_output))
    return outputs


class InceptionV3(nn.Module):
  """InceptionV3 backbone that stops at `stop_at` and builds nothing after it.

  Attributes:
    stop_at: last endpoint to compute, one of `ENDPOINTS`. 'predictions' needs include_top.
    include_top: build the ImageNet classifier (`predictions`, 1000 logits, no softmax).
    mixed10_pool: 'avg' (Keras) or 'max' (the 2015 TensorFlow graph; see `inception_e`).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
    fold_batchnorm: every unit is Conv (with bias) -> ReLU, for variables made by
      `inception.models.folding.fold_batchnorm` (frozen backbone; no `batch_stats`, no train_blocks).
    fuse_1x1: compute each block's 1x1 units that read the block input as one conv
      (`Block.units_1x1`); same parameters, same values up to float rounding, faster.

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
    for name, branches in architecture(self.mixed10_pool):
      x = Block(branches, dtype=self.dtype, fold_batchnorm=self.fold_batchnorm,
                fuse_1x1=self.fuse_1x1, name=name)(x, name in train_blocks)
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
