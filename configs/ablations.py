"""Ablations of the seed recipe (configs/dog_horse.py) or of the better recipe, one variant
per run.

    python -m inception.tools.ablations --config configs/ablations.py --workdir workdirs/ablations \\
        [--variants baseline,cut_mixed5] [--seeds 0,1,2]
    python train.py --config configs/ablations.py:variant=head_gap,seed=1   # one variant

Arg keys (all optional): variant (a name from `get_variants()`), seed (initialisation, data
order, dropout and the split), base ('dog_horse', 'dog_horse_best', or 'smoke': the tiny
synthetic recipe, for tests), and direct overrides applied after the variant: cut, head,
dropout, augment, preprocess, weights, images_per_class, epochs.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import common

UNFREEZE_MIXED7 = (('^backbone/mixed7/', 0.1), ('^backbone/', 0.0), ('.*', 1.0))


def get_variants() -> dict[str, dict[str, Any]]:
  """Variant name -> {'section.key': value} overrides of the base config."""
  v: dict[str, dict[str, Any]] = {'baseline': {}}
  for cut in ('mixed5', 'mixed6', 'mixed10'):  # mixed7 is the baseline
    v[f'cut_{cut}'] = {'model.cut': cut}
  v['head_gap'] = {'model.head': 'gap'}
  for rate in (0.0, 0.5):  # 0.2 is the baseline
    v[f'dropout_{rate:g}'] = {'model.dropout': rate}
  v['no_augment'] = {'data.augment.enabled': False}
  v['preprocess_inception'] = {'data.preprocess': 'inception'}
  v['weights_keras'] = {'model.weights': 'keras'}
  v['weights_random'] = {'model.weights': 'random'}
  for n in (50, 100):  # 500 is the baseline
    v[f'images_{n}'] = {'data.images_per_class': n}
  # Fine-tune the top block at a tenth of the lr, its BatchNorm in training mode.
  v['unfreeze_mixed7'] = {'optimizer.param_rules': UNFREEZE_MIXED7,
                          'model.batchnorm_train_blocks': ('mixed7',)}
  # The training knobs (each against the base config, usually base=dog_horse_best).
  v['image_299'] = {'data.image_size': 299}  # InceptionV3's native input size.
  v['cosine'] = {'optimizer.schedule': 'cosine', 'optimizer.warmup_epochs': 1.0}
  v['label_smoothing'] = {'train.label_smoothing': 0.1}
  v['ema'] = {'train.ema_decay': 0.95}
  v['weight_decay'] = {'optimizer.weight_decay': 0.05}
  # Deeper fine-tuning, with augmentation (the cache cannot apply): a tenth of the lr below the
  # head, a smaller one further down, the unfrozen blocks' BatchNorm in training mode.
  for name, blocks in (('unfreeze_mixed6_7', ('mixed6', 'mixed7')),
                       ('unfreeze_mixed5_7', ('mixed5', 'mixed6', 'mixed7'))):
    rules = tuple((f'^backbone/{b}/', 0.1 if b == 'mixed7' else 0.03) for b in blocks)
    v[name] = {'optimizer.param_rules': rules + (('^backbone/', 0.0), ('.*', 1.0)),
               'model.batchnorm_train_blocks': blocks, 'data.augment.enabled': True}
  return v


_ARG_KEYS = {'cut': 'model.cut', 'head': 'model.head', 'dropout': 'model.dropout',
             'augment': 'data.augment.enabled', 'preprocess': 'data.preprocess',
             'weights': 'model.weights', 'images_per_class': 'data.images_per_class',
             'epochs': 'train.epochs'}
_UNSET = {'cut': '', 'head': '', 'dropout': -1.0, 'augment': '', 'preprocess': '', 'weights': '',
          'images_per_class': 0, 'epochs': 0}


def set_path(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """config['a']['b']['c'] = value for 'a.b.c'; KeyError names an unknown key."""
  *parents, last = dotted.split('.')
  node = config
  for p in parents:
    node = node[p]
  if last not in node:
    raise KeyError(f'Ablation override {dotted!r}: no such config key')
  node[last] = value


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant='baseline', seed=0, base='dog_horse', **_UNSET)
  variants = get_variants()
  if a.variant not in variants:
    raise ValueError(f'Unknown ablation variant {a.variant!r}; valid: {", ".join(variants)}')
  if a.base == 'dog_horse':
    from configs import dog_horse as base  # pylint: disable=g-import-not-at-top
  elif a.base == 'dog_horse_best':
    from configs import dog_horse_best as base  # pylint: disable=g-import-not-at-top
  elif a.base == 'smoke':
    from configs import smoke as base  # pylint: disable=g-import-not-at-top
  else:
    raise ValueError(f'Config arg base={a.base!r} is not valid; valid: dog_horse, '
                     f'dog_horse_best, smoke')
  c = base.get_config()
  # A seed is a replicate: initialisation, data order, dropout AND the train/validation split.
  c.seed = a.seed
  c.data.split_seed = a.seed
  for dotted, value in variants[a.variant].items():
    set_path(c, dotted, value)
  if a.base == 'smoke' and 'data.images_per_class' in variants[a.variant]:
    c.data.synthetic.images_per_class = variants[a.variant]['data.images_per_class']
  for key, dotted in _ARG_KEYS.items():
    value = a[key]
    if value != _UNSET[key]:
      if key == 'augment':
        value = common.convert('augment', value, True)
      set_path(c, dotted, value)
  return c
