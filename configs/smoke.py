"""A tiny, fast run for smoke tests and CI: synthetic stripes, random backbone cut at mixed0.

    python train.py --config configs/smoke.py --workdir /tmp/smoke

Trains in well under a minute on a laptop CPU. Not a benchmark of anything.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: 'images_per_class=N,epochs=N,batch_size=N,cut=NAME' (defaults below)."""
  a = common.parse_arg(arg, images_per_class=16, epochs=2, batch_size=8, cut='mixed0')
  c = default.get_config()
  c.data.source = 'synthetic'
  c.data.synthetic.images_per_class = a.images_per_class
  c.data.synthetic.test_per_class = 4
  c.data.synthetic.image_size = 80
  c.data.validation_fraction = 0.25
  c.data.image_size = 75
  c.data.cache_decoded_mib = 64
  c.model.cut = a.cut
  c.model.weights = 'random'
  c.model.head = 'gap'
  c.model.dense_units = 32
  c.train.epochs = a.epochs
  c.train.batch_size = a.batch_size
  c.train.log_every_steps = 2
  c.checkpoint.async_save = False
  c.eval.batch_size = 8
  return c
