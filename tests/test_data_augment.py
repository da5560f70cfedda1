"""Augmentation equals Keras' ImageDataGenerator (tf_keras, scipy) transform for transform."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tf_keras.preprocessing.image import ImageDataGenerator
from tf_keras.preprocessing.image import apply_affine_transform

from data import augment
from data import config as config_lib
from data import testing


def _image(h=150, w=150):
  return testing.random_image(np.random.default_rng(0), h, w).astype(np.float32)


def _params(rng, flip):
  return {'theta': rng.uniform(-40, 40), 'tx': rng.uniform(-30, 30), 'ty': rng.uniform(-30, 30),
          'shear': rng.uniform(-20, 20), 'zx': rng.uniform(0.8, 1.2), 'zy': rng.uniform(0.8, 1.2),
          'flip': flip}


def _keras(img, p, fill_mode='nearest', cval=0.0):
  gen = ImageDataGenerator(fill_mode=fill_mode, cval=cval)
  kp = {k: v for k, v in p.items() if k != 'flip'}
  kp['flip_horizontal'] = p['flip']
  return gen.apply_transform(img, kp)


@pytest.mark.parametrize('hw', [(150, 150), (90, 130)])
def test_apply_matches_keras_apply_transform(hw):
  img = _image(*hw)
  rng = np.random.default_rng(1)
  for i in range(8):
    p = _params(rng, flip=bool(i % 2))
    want = _keras(img, p)
    got = augment.apply(tf.constant(img), p).numpy()
    diff = np.abs(got - want)
    # Same bilinear sampling on integer pixel centres and edge clamping as scipy's order=1,
    # mode='nearest': equal up to float32 rounding (stated tolerance: mean < 1 level on
    # 0..255 and > 99% of pixels within 2; measured: max ~0.003).
    assert diff.mean() < 1.0 and (diff <= 2).mean() > 0.99
    assert diff.max() < 0.05, (i, diff.max())


def test_each_parameter_alone_matches_keras_apply_affine_transform():
  img = _image()
  for kw in ({'theta': 33.0}, {'tx': 17.5}, {'ty': -12.0}, {'shear': 15.0}, {'zx': 0.83},
             {'zy': 1.17}):
    want = apply_affine_transform(img, row_axis=0, col_axis=1, channel_axis=2,
                                  fill_mode='nearest', order=1, **kw)
    p = {'theta': 0.0, 'tx': 0.0, 'ty': 0.0, 'shear': 0.0, 'zx': 1.0, 'zy': 1.0, **kw}
    got = augment.apply(tf.constant(img), p).numpy()
    assert np.abs(got - want).max() < 0.05, kw


def test_constant_fill_matches_keras():
  img = _image()
  p = _params(np.random.default_rng(4), flip=False)
  want = _keras(img, p, fill_mode='constant', cval=7.0)
  got = augment.apply(tf.constant(img), p, fill_mode='constant', cval=7.0).numpy()
  assert (want == 7.0).mean() > 0.05  # The transform does fill a border.
  assert np.abs(got - want).max() < 0.05


def test_random_parameters_follow_keras_distributions():
  cfg = config_lib.get_config().augment
  n = 3000
  seeds = tf.stack([tf.fill([n], tf.constant(5, tf.int64)), tf.range(n, dtype=tf.int64)], 1)
  sample = lambda cfg: tf.function(lambda: tf.vectorized_map(
      lambda s: augment.random_parameters(cfg, s, 150, 150), seeds))()
  ps = {k: v.numpy() for k, v in sample(cfg).items()}
  theta, tx, ty, shear, zx, zy = (ps[k] for k in ('theta', 'tx', 'ty', 'shear', 'zx', 'zy'))
  flip = ps['flip']
  for x, lo, hi in ((theta, -40, 40), (tx, -30, 30), (ty, -30, 30), (shear, -0.2, 0.2),
                    (zx, 0.8, 1.2), (zy, 0.8, 1.2)):
    assert lo <= x.min() and x.max() <= hi
    assert x.min() < lo + 0.02 * (hi - lo) and x.max() > hi - 0.02 * (hi - lo)  # Full range.
    assert abs(x.mean() - (lo + hi) / 2) < 0.03 * (hi - lo)  # Uniform: centred ...
    assert abs(x.std() - (hi - lo) / np.sqrt(12)) < 0.03 * (hi - lo)  # ... with its spread.
  assert abs(np.corrcoef(zx, zy)[0, 1]) < 0.06  # Independent x/y zoom.
  assert 0.46 < flip.mean() < 0.54
  # Same seed, same parameters; the flip knob off means never.
  again = augment.random_parameters(cfg, tf.constant([5, 7], tf.int64), 150, 150)
  assert all(float(again[k]) == float(ps[k][7]) for k in ('theta', 'tx', 'zx'))
  cfg.horizontal_flip = False
  assert not sample(cfg)['flip'].numpy().any()


def test_disabled_or_zero_ranges_are_identity():
  img = tf.constant(_image(40, 40))
  cfg = config_lib.get_config().augment
  cfg.enabled = False
  assert augment.is_identity(cfg)
  np.testing.assert_array_equal(augment.random_augment(img, tf.constant([0, 0]), cfg), img)
  cfg = config_lib.get_config().augment
  cfg.rotation_range = cfg.width_shift_range = cfg.height_shift_range = 0.0
  cfg.shear_range = cfg.zoom_range = 0.0
  cfg.horizontal_flip = False
  assert augment.is_identity(cfg)
  cfg.horizontal_flip = True
  flips = [np.array_equal(augment.random_augment(img, tf.constant([1, i]), cfg).numpy(),
                          img.numpy()[:, ::-1]) for i in range(40)]
  assert 8 < sum(flips) < 32  # Only flips remain, about half the time; no other change.
  assert all(f or np.array_equal(augment.random_augment(img, tf.constant([1, i]), cfg), img)
             for i, f in enumerate(flips))
