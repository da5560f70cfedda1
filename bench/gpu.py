"""Accelerator benchmark: train and eval images/s at 150 and 299 px, float32 and bfloat16.

    .venv/bin/python bench/gpu.py            # on a GPU: batch 256, ~3-4 minutes
    .venv/bin/python bench/gpu.py --quick    # anywhere (CPU too): tiny sizes, proves it runs

One prepared script for a time-limited accelerator: for each (mode, image size, dtype) it builds
the seed recipe (`configs/dog_horse.py`: InceptionV3 cut at mixed7, flatten head, RMSprop,
random weights; `model.dtype` float32 or bfloat16 computation with float32 params), compiles the
project's train step (`inception.train.steps.make_train_step`) or eval step, runs `--warmup` untimed
and `--calls` timed steps on device-resident data, and prints images/s and achieved TFLOP/s
(XLA cost analysis) against the chip's measured matmul rate for that dtype (a large square
matmul in the same run). Settings after `--budget-s` seconds are skipped and listed, so the
script always finishes in time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import common  # bench/common.py; also puts the repo root on sys.path.


def _setting(mode: str, size: int, dtype: str, batch: int, warmup: int, calls: int) -> dict:
  import jax
  import numpy as np
  from configs import dog_horse
  from inception.train import optim
  from inception.train import param_rules
  from inception.train import steps
  from inception import transfer

  config = dog_horse.get_config()
  config.model.dtype = dtype
  model = transfer.from_config(config, num_classes=2)
  variables = transfer.init_variables(model, size, seed=0)
  rng = np.random.default_rng(0)
  batch_np = {'image': rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32),
              'label': (np.arange(batch) % 2).astype(np.int32), 'mask': np.ones(batch, bool)}
  key = jax.random.key(0)
  start = time.perf_counter()
  if mode == 'train':
    tx = optim.make(config.optimizer, variables['params'])
    mask = param_rules.trainable_mask(variables['params'], config.optimizer.param_rules)
    holder = {'state': steps.create_state(jax.device_put(variables), tx)}
    b = jax.device_put({k: batch_np[k] for k in ('image', 'label')})
    compiled = steps.make_train_step(model, tx, mask).lower(holder['state'], b, key).compile()

    def call():
      holder['state'], metrics = compiled(holder['state'], b, key)
      return metrics
  else:
    v = jax.device_put(variables)
    b = jax.device_put(batch_np)
    compiled = steps.make_eval_step(model, num_classes=2).lower(v, b).compile()

    def call():
      return compiled(v, b)
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    jax.block_until_ready(call())
  start = time.perf_counter()
  for _ in range(calls):
    out = call()
  jax.block_until_ready(out)  # Steps are queued back to back, as in training.
  seconds = (time.perf_counter() - start) / calls
  return {'images_per_s': batch / seconds, 'flops': common.compiled_flops(compiled),
          'seconds': seconds, 'compile_s': compile_s}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='tiny sizes: runs on CPU in ~1 minute')
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--sizes', default='150,299')
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--modes', default='train,eval')
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--calls', type=int, default=20)
  p.add_argument('--matmul-size', type=int, default=8192)
  p.add_argument('--budget-s', type=float, default=270.0,
                 help='skip the remaining settings once this much time has passed')
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.sizes, args.warmup, args.calls, args.matmul_size = 2, '75', 1, 2, 512
  started = time.perf_counter()
  import jax
  import jax.numpy as jnp
  print(common.environment())
  device = jax.devices()[0]
  print(f'# device: {device.platform} {getattr(device, "device_kind", "")} '
        f'x{jax.device_count()}; batch {args.batch}{" (--quick)" if args.quick else ""}',
        flush=True)
  peaks = {}
  for dtype in args.dtypes.split(','):
    peaks[dtype] = common.matmul_peak(args.matmul_size, repeats=5, dtype=getattr(jnp, dtype))
    print(f'# measured {dtype} matmul rate ({args.matmul_size}^3): {peaks[dtype] / 1e12:.2f} '
          'TFLOP/s', flush=True)
  print(f'\n{"mode":<6s} {"size":>5s} {"dtype":<9s} {"images/s":>10s} {"TFLOP/s":>8s} '
        f'{"% of matmul":>11s} {"compile s":>9s}', flush=True)
  skipped = []
  for mode in args.modes.split(','):
    for size in (int(s) for s in args.sizes.split(',')):
      for dtype in args.dtypes.split(','):
        if time.perf_counter() - started > args.budget_s:
          skipped.append(f'{mode}/{size}/{dtype}')
          continue
        r = _setting(mode, size, dtype, args.batch, args.warmup, args.calls)
        achieved = r['flops'] / r['seconds']
        print(f'{mode:<6s} {size:>5d} {dtype:<9s} {r["images_per_s"]:10.1f} '
              f'{achieved / 1e12:8.3f} {100 * achieved / peaks[dtype]:10.0f}% '
              f'{r["compile_s"]:9.1f}', flush=True)
  if skipped:
    print(f'# skipped (over --budget-s {args.budget_s:.0f}): {", ".join(skipped)}')
  print(f'# total {time.perf_counter() - started:.0f} s; load average '
        f'{", ".join(f"{x:.2f}" for x in os.getloadavg())}')


if __name__ == '__main__':
  sys.exit(main())
