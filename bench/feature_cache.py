"""Feature cache: epoch times of cached training vs Keras' seed-recipe epoch, and the FLOP floor.

    .venv/bin/python bench/feature_cache.py [--epochs 3] [--keras-epochs 1] \
        [--images-per-class 500] [--data-path DIR] [--threads 2]

The seed recipe with augmentation off (so the cache is valid): frozen InceptionV3 (tf2015
weights) cut at mixed7, 150 px, batch 20, RMSprop 1e-3, real photos from
../shared/data/animals10-standin (or $ANIMALS10_DIR, or --data-path) when present, else the
synthetic data set; no test split (not part of an epoch). Runs, in one process:

  1. `trainer.train` with train.feature_cache='on', head 'flatten': epoch 1 computes and stores
     the train and validation features, later epochs train the head on them. Epoch time = time
     between the trainer's epoch lines (training + validation; checkpoints only after the last).
  2. The same with head 'gap' (a 'gap' head caches pooled features: its epoch 1 computes its
     own cache).
  3. tf_keras `model.fit` of the same train/validation arrays (`tests/reference/keras_models.py`
     `build_model`: frozen backbone + Flatten head, same weights), --keras-epochs epochs.
  4. The flatten head step alone: XLA cost analysis FLOPs, median step time, GFLOP/s vs the
     measured float32 matmul peak (`bench.common.matmul_peak`), and the memory-bandwidth floor
     (its 154 MB Dense kernel goes through memory ~7 times a step; measured copy bandwidth).

About 10 min on 2 busy cores (Keras' epoch and our feature-computing epoch ~130 s each).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time

import numpy as np

import common  # bench/common.py; also puts the repo root on sys.path.
from tests.reference import keras_models  # pylint: disable=g-bad-import-order
from tests.reference import keras_recipe  # pylint: disable=g-bad-import-order

FLATTEN_KERNEL_BYTES = 4 * 7 * 7 * 768 * 1024  # float32 Dense(37632 -> 1024): mixed7, 150 px.


def make_config(args, head: str):
  from configs import dog_horse
  c = dog_horse.get_config()
  d = c.data
  d.augment.enabled = False
  d.test_per_class = 0
  if args.data_path:
    d.path = args.data_path
    d.images_per_class = args.images_per_class
    d.fallback_to_synthetic = False
  else:
    d.source = 'synthetic'
    d.synthetic.images_per_class = args.images_per_class
    d.synthetic.test_per_class = 0
  c.model.head = head
  c.train.epochs = args.epochs
  c.train.feature_cache = 'on'
  c.train.log_every_steps = 45
  c.checkpoint.every_epoch = False  # Keras' epochs write nothing; we save after the last.
  c.checkpoint.keep_best = False
  return c


def timed_run(config, workdir: pathlib.Path, feature_dir: pathlib.Path) -> list[float]:
  """Trains, the features cached under `feature_dir`; returns each epoch's seconds (epoch 1
  from the start of the training loop)."""
  from inception.train import trainer
  marks: list[tuple[float, str]] = []

  def log(line: str) -> None:
    marks.append((time.perf_counter(), line))
    print(f'  | {line}', flush=True)

  trainer.train(config, workdir, log=log, progress_bars=False, feature_dir=feature_dir)
  start = next(t for t, l in marks if l.startswith('Feature cache: key'))
  ends = [next(t for t, l in marks if l.startswith(f'epoch {e}/')) for e in
          range(1, config.train.epochs + 1)]
  return [float(t) for t in np.diff([start] + ends)]


def head_step_inputs(config):
  """What the cached head step runs on: (trainer session, replicated and data shardings, a batch
  of random cut-layer features [batch, h, w, C] with labels, a replicated dropout key)."""
  import jax
  from inception.train import sharding
  from inception.train import trainer
  from inception import transfer
  s = trainer.build(config, log=lambda _: None)
  repl, dsh = sharding.replicated(s.mesh), sharding.data_sharded(s.mesh)
  feats = jax.eval_shape(transfer.BackboneOnly(s.model).apply,
                         {'params': s.state.params, 'batch_stats': s.state.batch_stats},
                         jax.ShapeDtypeStruct((config.train.batch_size, config.data.image_size,
                                               config.data.image_size, 3), np.float32))
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({'image': rng.normal(size=feats.shape).astype(np.float32),
                                'label': rng.integers(0, 2, feats.shape[0]).astype(np.int32)},
                               s.mesh)
  return s, repl, dsh, batch, jax.device_put(jax.random.key(0), repl)


def head_step(config) -> tuple[float, float]:
  """(FLOPs per step from XLA's cost analysis, median seconds per step) of the cached step."""
  import jax
  from inception.train import steps as steps_lib
  from inception import transfer
  s, repl, dsh, batch, key = head_step_inputs(config)
  step = steps_lib.make_train_step(transfer.HeadOnly(s.model), s.tx, s.mask,
                                   state_sharding=repl, batch_sharding=dsh)
  compiled = step.lower(s.state, batch, key).compile()
  state, times = s.state, []
  for i in range(12):
    t = time.perf_counter()
    state, m = compiled(state, batch, key)
    jax.block_until_ready(m)
    if i >= 2:  # Warm-up.
      times.append(time.perf_counter() - t)
  return common.compiled_flops(compiled), statistics.median(times)


def copy_bandwidth(nbytes: int, repeats: int = 10) -> float:
  """Measured memory bandwidth, bytes/s: best `a * c` over a float32 array of `nbytes` (read +
  write). The flatten head's Dense kernel (37632 x 1024, 154 MB) does not fit any cache, so
  its step is bound by this rather than by the matmul rate."""
  import jax
  import jax.numpy as jnp
  from inception.train import xla_options
  a = jnp.ones([nbytes // 4], jnp.float32)
  f = jax.jit(lambda a: a * 1.0001, compiler_options=xla_options.compiler_options())
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * nbytes / best


def keras_epochs(config, epochs: int) -> list[float]:
  """tf_keras fit of the same train/validation arrays; seconds per epoch (incl. validation)."""
  import jax
  import data
  from inception import weights
  info = data.prepare(config.data, log=lambda _: None)

  def arrays(split):
    xs, ys = [], []
    for b in data.eval_batches(info, config.data, split=split, batch_size=40):
      xs.append(b['image'][b['mask']])
      ys.append(b['label'][b['mask']])
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32)

  (x, y), (xv, yv) = arrays('train'), arrays('validation')
  variables = jax.device_get(weights.load(config.model.weights).variables)
  model = keras_models.build_model(config.data.image_size, variables, config.model.cut)
  timer = keras_recipe.epoch_timer()
  model.fit(x, y, batch_size=config.train.batch_size, epochs=epochs, shuffle=True,
            validation_data=(xv, yv), callbacks=[timer], verbose=2)
  return timer.seconds


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--epochs', type=int, default=3, help='our epochs per head (>= 2)')
  p.add_argument('--keras-epochs', type=int, default=1)
  p.add_argument('--images-per-class', type=int, default=500)
  p.add_argument('--data-path', default=None,
                 help='Animals-10 folder (default: $ANIMALS10_DIR or '
                      '../shared/data/animals10-standin; synthetic data when neither exists)')
  p.add_argument('--threads', type=int, default=min(2, os.cpu_count() or 1),
                 help='TensorFlow (Keras) intra/inter-op threads')
  args = p.parse_args(argv)
  if args.epochs < 2:
    p.error('--epochs must be >= 2 (epoch 1 computes the features)')
  common.quiet_tensorflow()
  keras_models.configure_tensorflow(args.threads)
  if args.data_path is None:
    args.data_path = common.default_data_path()
  print(common.environment(), flush=True)
  print(f'# data: {args.data_path or "SYNTHETIC (no real photos found)"}, '
        f'{args.images_per_class} images/class, augmentation off', flush=True)

  with tempfile.TemporaryDirectory() as tmp:
    ours = {}
    for head in ('flatten', 'gap'):
      print(f'ours, head {head}:', flush=True)
      # A fresh feature folder: epoch 1 really computes them.
      ours[head] = timed_run(make_config(args, head), pathlib.Path(tmp) / head,
                             pathlib.Path(tmp) / 'features')
  flatten_cfg = make_config(args, 'flatten')
  print('Keras (tf_keras fit, frozen backbone + Flatten head, same arrays):', flush=True)
  keras = keras_epochs(flatten_cfg, args.keras_epochs)
  flops, step_s = head_step(flatten_cfg)
  peak = common.matmul_peak()
  kernel_bytes = FLATTEN_KERNEL_BYTES
  bandwidth = copy_bandwidth(kernel_bytes)

  k = statistics.median(keras)
  import data  # pylint: disable=g-import-not-at-top
  spe = data.steps_per_epoch(data.prepare(flatten_cfg.data, log=lambda _: None),
                             flatten_cfg.train.batch_size)
  print(f'\n{common.environment()}')
  print(f'Keras seed-recipe epoch (fit, {args.keras_epochs} epoch(s)): median {k:.1f} s '
        f'{[round(t, 1) for t in keras]}')
  for head, times in ours.items():
    later = statistics.median(times[1:])
    what = 'computes features' if head == 'flatten' else 'features from the cache'
    print(f'ours {head:7s}: epoch 1 ({what}) {times[0]:.1f} s; later epochs median '
          f'{later:.2f} s {[round(t, 2) for t in times[1:]]}; Keras/ours later {k / later:.1f}x; '
          f'Keras/ours epoch 1 {k / times[0]:.1f}x')
  later = statistics.median(ours['flatten'][1:])
  print(f'flatten head step (batch {flatten_cfg.train.batch_size}): {flops / 1e9:.2f} GFLOP '
        f'(XLA cost analysis), {step_s * 1e3:.0f} ms median -> {flops / step_s / 1e9:.1f} '
        f'GFLOP/s; float32 matmul peak {peak / 1e9:.1f} GFLOP/s '
        f'({flops / step_s / peak:.0%}); whole later epoch {spe} steps at '
        f'{spe * flops / later / 1e9:.1f} GFLOP/s')
  # Per step the kernel-sized arrays go through memory at least 7 times: read W (forward),
  # write dW (backward), RMSprop reads W, dW, v and writes W, v.
  mem_floor = spe * 7 * kernel_bytes / bandwidth
  print(f'memory: measured copy bandwidth {bandwidth / 1e9:.1f} GB/s; 7 passes over the '
        f'{kernel_bytes / 1e6:.0f} MB Dense kernel per step -> bandwidth floor '
        f'{mem_floor / spe * 1e3:.0f} ms/step, {mem_floor:.1f} s/epoch (Keras/floor '
        f'{k / mem_floor:.0f}x); measured step = {mem_floor / spe / step_s:.0%} of that floor')
  floor = spe * flops / peak
  print(f'FLOP floor of a flatten epoch at the matmul peak: {floor:.1f} s -> at most '
        f'{k / floor:.0f}x vs this Keras epoch; 50x reached: flatten '
        f'{"yes" if k / later >= 50 else "no"}, gap '
        f'{"yes" if k / statistics.median(ours["gap"][1:]) >= 50 else "no"}')


if __name__ == '__main__':
  main()
