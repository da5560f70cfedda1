"""The backbone registry: what the transfer model, validation, the feature cache and the tools
need to know about a backbone, in one entry (`config.model.backbone` names it). An entry joins
a model (`inception.models.inception_v3`) to its pretrained weights (`inception.weights`), so
the registry sits above both and neither imports it; the transfer model
(`inception.transfer`) builds on it.

    backbone = backbones.get(config.model.backbone)
    module = backbone.build(stop_at='mixed7', dtype=jnp.float32, name='backbone', **variant)
    features = module(images, train_blocks)           # [N, h, w, C] at a block endpoint

A backbone's pretrained variables come from `backbone.load_pretrained(weights, cut, log)`, which
returns (variables or None for 'random', provenance). The provenance's 'variant' holds the build
keywords the weights need (InceptionV3's 2015 graph: {'mixed10_pool': 'max'}); the run record
stores it so that a checkpoint is rebuilt with the same architecture.

Adding a backbone: a Flax module taking (x, train_blocks) and built with stop_at=, dtype=,
name=, and one `register(Backbone(...))` call before the config that names it is used
(`tests/test_backbones.py` registers a tiny one and trains with it end to end).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import flax.linen as nn

from inception import weights as weights_lib
from inception.models import inception_v3


@dataclasses.dataclass(frozen=True)
class Backbone:
  """One registry entry.

  name: `config.model.backbone`; build: (stop_at=, dtype=, name=, **variant) -> module called as
  module(x, train_blocks); endpoints: valid `model.cut` values, input to output order; blocks:
  what `model.batchnorm_train_blocks` may name (and param paths 'backbone/<block>/...' start
  with); min_image_size: smallest `data.image_size`, px; weight_names: named pretrained sources
  besides 'random' (a path to a file works too when `accepts_paths`); load_pretrained:
  (weights, cut, log) -> (variables or None, provenance with 'weights', 'source', 'sha256',
  'variant').
  """
  name: str
  build: Callable[..., nn.Module]
  endpoints: tuple[str, ...]
  blocks: tuple[str, ...]
  min_image_size: int
  weight_names: tuple[str, ...]
  load_pretrained: Callable[[str, str, Callable[[str], None]], tuple[dict | None, dict]]
  accepts_paths: bool = True

  def check_weights(self, weights: str) -> None:
    """ValueError naming config.model.weights unless it is 'random', a known name or a file."""
    if weights in ('random',) + self.weight_names:
      return
    if self.accepts_paths and os.path.exists(os.path.expanduser(weights)):
      return
    raise ValueError(f'config.model.weights={weights!r} is neither a known name (random, '
                     f'{", ".join(self.weight_names)}) nor an existing file')


def _load_inception_v3(weights: str, cut: str, log: Callable[[str], None]
                       ) -> tuple[dict | None, dict]:
  """`inception.weights.load(weights)` cut after `cut`; 'random': no variables."""
  if weights == 'random':
    return None, {'weights': 'random', 'source': 'random init', 'sha256': None,
                  'variant': {'mixed10_pool': 'avg'}}
  pre = weights_lib.load(weights)
  sub = weights_lib.select_blocks(pre.variables, cut)
  log(f'Loaded backbone weights {weights!r} from {pre.source} (sha256 {pre.sha256})')
  return sub, {'weights': weights, 'source': str(pre.source), 'sha256': pre.sha256,
               'variant': {'mixed10_pool': getattr(pre, 'mixed10_pool', 'avg')}}


INCEPTION_V3 = Backbone(
    name='inception_v3', build=inception_v3.InceptionV3,
    endpoints=tuple(e for e in inception_v3.ENDPOINTS if e != 'predictions'),
    blocks=inception_v3.BLOCKS, min_image_size=inception_v3.MIN_IMAGE_SIZE,
    weight_names=tuple(weights_lib.WEIGHTS), load_pretrained=_load_inception_v3)

# name -> entry. Module-level on purpose: registering is how a backbone is added (see above).
_REGISTRY: dict[str, Backbone] = {INCEPTION_V3.name: INCEPTION_V3}


def register(backbone: Backbone) -> Backbone:
  """Adds `backbone` (replacing an entry of the same name); returns it."""
  _REGISTRY[backbone.name] = backbone
  return backbone


def unregister(name: str) -> None:
  """Removes the entry `name` (e.g. a test's backbone); the built-in one stays."""
  if name == INCEPTION_V3.name:
    raise ValueError(f'{name!r} is built in and cannot be unregistered')
  _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Backbone:
  """The entry for `name`; ValueError naming config.model.backbone and the valid names."""
  if name not in _REGISTRY:
    raise ValueError(f'config.model.backbone={name!r} is not valid; valid: '
                     f'{", ".join(sorted(_REGISTRY))}')
  return _REGISTRY[name]
