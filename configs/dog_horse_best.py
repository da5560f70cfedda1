"""A better recipe than the seed's, chosen on validation accuracy from the ablations.

    python train.py --config configs/dog_horse_best.py [--config.seed=S --config.data.split_seed=S]

The seed recipe (configs/dog_horse.py) with four changes, chosen on validation only (README,
"Results"): the `inception` preprocessing (x/127.5 - 1, what the ImageNet weights were trained
on, instead of the notebook's x/255); no augmentation, which makes every epoch's features the
same, so the feature cache (train.feature_cache='auto') runs the frozen backbone once and the
epochs train the head alone; a global-average-pool head instead of Flatten (49x fewer head
weights, a steady validation loss); dropout 0.5. Everything else is the seed's: 500 images per
class split 450/50, 150 px, frozen mixed7 cut, Dense(1024, relu), Dense(1), RMSprop 1e-3,
batch 20, 10 epochs.

Result on the real stand-in photos (`ANIMALS10_DIR=../shared/data/animals10-standin`, seeds
0, 1, 2 with `--config.seed=S --config.data.split_seed=S`): validation accuracy 0.980 +- 0.010,
validation loss 0.048 +- 0.004, **test accuracy 0.9826 +- 0.0020** (978 images; the seed recipe:
0.958 +- 0.027 here), in a few minutes per run on a 2-core CPU instead of ~25 (README).
"""

from __future__ import annotations

import ml_collections

from configs import dog_horse


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = dog_horse.get_config(arg)
  c.data.preprocess = 'inception'
  c.data.augment.enabled = False
  c.model.head = 'gap'
  c.model.dropout = 0.5
  c.train.feature_cache = 'auto'
  return c
