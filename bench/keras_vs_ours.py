"""Ours vs Keras 2 side by side: backbone forward and the seed recipe's train step.

    .venv/bin/python bench/keras_vs_ours.py [--repeats 4] [--steps 3] [--batches 20,64]
        [--skip-train] [--skip-forward]

Both sides run the seed recipe at 150 px: InceptionV3 (weights=None, random BatchNorm statistics)
cut at mixed7 and frozen -> Flatten -> Dense(1024, relu) -> Dropout(0.2) -> Dense(1, sigmoid),
RMSprop 1e-3, batch 20, on the same in-memory arrays. The Keras side is
`keras_models.build_model`; its random weights are copied into ours by layer order
(`keras_models.to_flax_variables`) and the backbone features are asserted equal (<= 1e-4
relative) before timing.

Sections (each contender timed alternately A B A B ..., after warm-up and compilation, medians):
  forward    backbone features, batch 20 and 64: Keras (tf.function) vs ours (jit): unfolded,
             with BatchNorm folded into the convs (`inception.models.folding`), and folded with
             XLA's Eigen convolutions instead of YNNPACK (`inception.train.xla_options`).
  train/aug  `steps` train steps, augmentation on: Keras `model.fit(ImageDataGenerator(seed
             parameters).flow(x, y, batch_size=20))` vs ours: the project's train step
             (`inception.train.steps.make_train_step`) fed by a tf.data pipeline on the same arrays using
             the project's augmentation (`data.augment.random_augment`), prefetching (overlapped
             with compute), compiled with default options and with `inception.train.xla_options`.
             NOTE: the augmentations differ in implementation (Keras: scipy per
             image in Python; ours: ImageProjectiveTransformV3 in tf.data) but not in recipe.
  train      one step on a fixed in-memory batch, no augmentation: Keras `train_on_batch` vs our
             jitted step; and each side's step time over its own forward time.
Also prints achieved GFLOP/s of our steps (XLA cost analysis) against this machine's measured
float32 matmul rate (2048^3, same run).
"""

from __future__ import annotations

import argparse
import os
import sys

import common  # bench/common.py; also puts the repo root on sys.path.
from tests.reference import keras_models  # pylint: disable=g-bad-import-order

common.quiet_tensorflow()

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

from inception.models import folding
from inception.models import inception_v3 as model_lib
from inception.train import xla_options

OPTIONS = xla_options.compiler_options('cpu')  # YNNPACK off: Eigen convolutions.

BATCH = common.BATCH_SIZE
SIZE = common.IMAGE_SIZE


def _keras_forward(backbone):
  fn = tf.function(lambda x: backbone(x, training=False))
  return lambda x: fn(x).numpy()


def check_features(keras_features, variables, images: np.ndarray) -> float:
  """Max relative difference of our (unfolded and folded) mixed7 features vs Keras'."""
  want = keras_features(images, training=False).numpy()
  model = model_lib.InceptionV3(stop_at=common.CUT)
  with jax.default_matmul_precision('highest'):
    ours = np.asarray(jax.jit(model.apply)(variables, images))
    folded = np.asarray(jax.jit(folding.folded_model(model).apply)(
        folding.fold_batchnorm(variables), images))
  scale = np.abs(want).max()
  errors = [np.abs(ours - want).max() / scale, np.abs(folded - want).max() / scale]
  assert max(errors) <= 1e-4, f'features differ from Keras: relative {errors}'
  return max(errors)


def bench_forward(keras_features, variables, batches, repeats: int, peak: float) -> dict:
  model = model_lib.InceptionV3(stop_at=common.CUT)
  folded_vars = jax.device_put(folding.fold_batchnorm(variables))
  variables = jax.device_put(variables)
  keras_fn = _keras_forward(keras_features)
  out = {}
  for batch in batches:
    x_np = common.random_images(batch, SIZE, seed=batch)
    x = jax.device_put(x_np)
    ours = jax.jit(model.apply).lower(variables, x).compile()
    folded_apply = jax.jit(lambda v, x: folding.folded_model(model).apply(v, x))
    ours_folded = folded_apply.lower(folded_vars, x).compile()
    ours_fast = folded_apply.lower(folded_vars, x).compile(compiler_options=OPTIONS)
    print(f'\nforward, backbone to {common.CUT}, batch {batch}, {SIZE} px', flush=True)
    times = common.alternate({
        'keras (tf.function)': lambda: keras_fn(x_np),
        'ours (jit)': lambda: ours(variables, x).block_until_ready(),
        'ours (jit, BatchNorm folded)': lambda: ours_folded(folded_vars, x).block_until_ready(),
        'ours (folded, Eigen convs)': lambda: ours_fast(folded_vars, x).block_until_ready(),
    }, repeats)
    rates = common.report_rates(times, batch, baseline='keras (tf.function)')
    common.report_ratios(times, [('ours (folded, Eigen convs)', 'keras (tf.function)')])
    flops = common.compiled_flops(ours_fast)
    achieved = flops / common.median(times['ours (folded, Eigen convs)'])
    print(f'  ours folded, Eigen convs: {flops / batch / 1e9:.2f} GFLOP/image, {achieved / 1e9:.1f} GFLOP/s '
          f'= {100 * achieved / peak:.0f}% of the measured matmul peak', flush=True)
    out[batch] = rates
  return out


def _our_augmented_batches(x_uint8: np.ndarray, y: np.ndarray, config) -> tf.data.Dataset:
  """Infinite augmented, rescaled batches of 20 from in-memory arrays, prefetched."""
  from data import augment
  from data import preprocessing
  preprocess = preprocessing.get(config.data.preprocess)
  aug = config.data.augment

  def load(i, image, label):
    img = augment.random_augment(tf.cast(image, tf.float32), tf.stack([tf.constant(7, tf.int64), i]),
                                 aug)
    img.set_shape([SIZE, SIZE, 3])
    return {'image': preprocess(img), 'label': label}

  ds = tf.data.Dataset.from_tensor_slices((x_uint8, y)).repeat().enumerate()
  ds = ds.map(lambda i, xy: load(i, *xy), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(BATCH, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def bench_train(keras_model, keras_features, variables, repeats: int, steps_per_timing: int,
                peak: float) -> None:
  n = BATCH * 10
  rng = np.random.default_rng(0)
  x_uint8 = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
  y = (np.arange(n) % 2).astype(np.int32)
  flow = keras_models.augmentation(rescale=1 / 255).flow(x_uint8.astype(np.float32), y,
                                                         batch_size=BATCH, seed=0)
  # Compiled with XLA's defaults; lowered again below with the project's options.
  config, _, step, state = common.seed_train_setup(variables)
  batches = _our_augmented_batches(x_uint8, y, config).as_numpy_iterator()
  key = jax.random.key(0)
  holder = {'state': state}
  first = next(batches)
  step_default = step.lower(state, first, key).compile()
  step_fast = step.lower(state, first, key).compile(compiler_options=OPTIONS)

  def ours_fit(compiled):
    def fit():
      for _ in range(steps_per_timing):
        holder['state'], metrics = compiled(holder['state'], next(batches), key)
      jax.block_until_ready(metrics)
    return fit

  def keras_fit():
    keras_model.fit(flow, steps_per_epoch=steps_per_timing, epochs=1, verbose=0)

  print(f'\ntrain with augmentation: {steps_per_timing} steps of batch {BATCH} per timing, '
        f'{SIZE} px', flush=True)
  times = common.alternate({'keras (fit, ImageDataGenerator.flow)': keras_fit,
                            'ours (train step, tf.data augment)': ours_fit(step_default),
                            'ours (same, Eigen convs)': ours_fit(step_fast)}, repeats)
  common.report_rates(times, BATCH * steps_per_timing,
                      baseline='keras (fit, ImageDataGenerator.flow)')
  common.report_ratios(times, [('ours (same, Eigen convs)',
                                'keras (fit, ImageDataGenerator.flow)')])

  # One step on a fixed batch, no input pipeline: the step's own cost vs the forward pass.
  xb = x_uint8[:BATCH].astype(np.float32) / 255.0
  yb = y[:BATCH]
  batch = jax.device_put({'image': xb, 'label': yb})
  compiled_step = step_fast
  keras_fwd = _keras_forward(keras_features)
  model = model_lib.InceptionV3(stop_at=common.CUT)
  backbone_vars = jax.device_put(variables)
  fwd = jax.jit(model.apply).lower(backbone_vars, batch['image']).compile(
      compiler_options=OPTIONS)

  def ours_step():
    holder['state'], metrics = compiled_step(holder['state'], batch, key)
    jax.block_until_ready(metrics)

  print(f'\ntrain step on one in-memory batch of {BATCH} (no augmentation) vs forward alone',
        flush=True)
  times = common.alternate({
      'keras train_on_batch': lambda: keras_model.train_on_batch(xb, yb),
      'ours train step (Eigen convs)': ours_step,
      'keras forward': lambda: keras_fwd(xb),
      'ours forward (Eigen convs)': lambda: fwd(backbone_vars, batch['image']).block_until_ready(),
  }, repeats)
  common.report_rates(times, BATCH, baseline='keras train_on_batch')
  common.report_ratios(times, [('ours train step (Eigen convs)', 'keras train_on_batch'),
                               ('ours forward (Eigen convs)', 'keras forward')])
  med = {k: common.median(v) for k, v in times.items()}
  print(f'  step / forward time: keras {med["keras train_on_batch"] / med["keras forward"]:.2f}, '
        f'ours {med["ours train step (Eigen convs)"] / med["ours forward (Eigen convs)"]:.2f}')
  flops = common.compiled_flops(compiled_step)
  achieved = flops / med['ours train step (Eigen convs)']
  print(f'  ours train step: {flops / 1e9:.1f} GFLOP/step, {achieved / 1e9:.1f} GFLOP/s = '
        f'{100 * achieved / peak:.0f}% of the measured matmul peak', flush=True)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=4)
  p.add_argument('--steps', type=int, default=3, help='train steps per timing (augmented fit)')
  p.add_argument('--batches', default='20,64', help='forward batch sizes')
  p.add_argument('--skip-forward', action='store_true')
  p.add_argument('--skip-train', action='store_true')
  args = p.parse_args(argv)
  print(common.environment())
  peaks = common.matmul_peaks()
  peak = max(peaks.values())
  print('# float32 matmul 2048^3, GFLOP/s: ' + ', '.join(
      f'{name} {rate / 1e9:.1f}' for name, rate in peaks.items())
      + f'; the best, {peak / 1e9:.1f}, is the peak below', flush=True)
  keras_model, keras_features, variables = keras_models.random_reference(SIZE, common.CUT)
  err = check_features(keras_features, variables, common.random_images(4, SIZE, seed=1))
  print(f'# features ours == Keras at {common.CUT}: max relative difference {err:.1e} '
        '(unfolded and folded)', flush=True)
  if not args.skip_forward:
    bench_forward(keras_features, variables, [int(b) for b in args.batches.split(',')],
                  args.repeats, peak)
  if not args.skip_train:
    bench_train(keras_model, keras_features, variables, args.repeats, args.steps, peak)
  print(f'\n# load average at the end: {", ".join(f"{x:.2f}" for x in os.getloadavg())}')


if __name__ == '__main__':
  sys.exit(main())
