"""A better recipe than the seed's, chosen on validation accuracy from the ablations.

    python train.py --config configs/dog_horse_best.py [--config.seed=S --config.data.split_seed=S]

The seed recipe (configs/dog_horse.py) with two changes, both from the ablation table
(README, "Results"): the `inception` preprocessing (x/127.5 - 1, what the ImageNet weights
were trained on, instead of the notebook's x/255), and no augmentation, which makes every
epoch's features the same, so the feature cache (train.feature_cache='auto') runs the frozen
backbone once and the 10 epochs train the head alone. Everything else is the seed's: 500
images per class split 450/50, 150 px, mixed7 -> Flatten -> Dense(1024, relu) ->
Dropout(0.2) -> Dense(1), RMSprop 1e-3, batch 20, 10 epochs.

Result: see README ("Results", the better recipe: 3 seeds, test accuracy and wall time).
"""

from __future__ import annotations

import ml_collections

from configs import dog_horse


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = dog_horse.get_config(arg)
  c.data.preprocess = 'inception'
  c.data.augment.enabled = False
  c.train.feature_cache = 'auto'
  return c
