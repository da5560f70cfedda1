"""The better recipe at InceptionV3's native input size: configs/dog_horse_best.py at 299 px.

    ANIMALS10_DIR=../shared/data/animals10-standin python train.py \
        --config configs/dog_horse_299.py [--config.seed=S --config.data.split_seed=S]

dog_horse_best.py (the `inception` preprocessing, no augmentation so that the feature cache runs
the frozen backbone once per split, a global-average-pool head, dropout 0.5; everything else
the seed's: 500 images per class split 450/50, frozen mixed7 cut, Dense(1024, relu), Dense(1),
RMSprop 1e-3, batch 20, 10 epochs) with `data.image_size = 299`, the size the ImageNet weights
were trained at (mixed7 features 17x17 instead of 7x7). Chosen on validation only, by a rule
written before the sweep (docs/results.md, "Beyond the seed"): among the knob ablations of
dog_horse_best (299 px, warmup + cosine, label smoothing, EMA, weight decay, flip TTA) it alone
reached validation accuracy 1.0 with every seed, at the lowest validation loss.

Result on the real stand-in photos, seeds 0, 1, 2 (`--config.seed=S --config.data.split_seed=S`;
the same runs as `configs/ablations.py:base=dog_horse_best,variant=image_299,seed=S`):
validation accuracy 1.0 for each seed, validation loss 0.0038 +- 0.0010, **test accuracy
0.9963 +- 0.0016** (2, 5 and 4 errors of 978), test loss 0.0120 +- 0.0041; ~2 min a run on the
2-core AMD EPYC VM (the first run of a split computes its 299 px features; the seed recipe: ~25
min). The issue's target (>= 0.997, loss <= 0.01) is missed by about one image a seed; the
remaining errors are in docs/results.md.
"""

from __future__ import annotations

import ml_collections

from configs import dog_horse_best


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = dog_horse_best.get_config(arg)
  c.data.image_size = 299
  return c
