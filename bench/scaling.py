"""Scaling table: images/s and peak memory of our train step and eval as batch and image grow.

    .venv/bin/python bench/scaling.py [--batches 20,64,128] [--sizes 150,299]
        [--modes train,eval] [--calls 1] [--folded] [--xla-defaults]

Each setting runs in its own subprocess (`--one mode,batch,size`), so its peak resident memory
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, whole process: Python, JAX, compiled code, arrays)
is its own; XLA's own estimate of the compiled step's temporary buffers
(`compiled.memory_analysis().temp_size_in_bytes`) is printed too. Model: the project's seed
recipe (`configs/dog_horse.py`: mixed7 cut, flatten head, RMSprop; random weights), step:
`inception.train.steps.make_train_step` / `make_eval_step`. Throughput: `calls` timed calls after
compilation and one untimed call, median. Settings run one after another, so a busy machine
slows some more than others: read the table's trend, not its third digit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import common  # bench/common.py; also puts the repo root on sys.path.


def run_one(mode: str, batch: int, size: int, calls: int, folded: bool,
            xla_defaults: bool) -> dict:
  """Measures one setting in this process; returns a JSON-able row."""
  import jax
  import numpy as np
  from configs import dog_horse
  from inception.train import optim
  from inception.train import param_rules
  from inception.train import steps
  from inception import transfer

  # None: the project's options (inception/train/xla_options.py, as training uses); {}: XLA's own.
  options = {} if xla_defaults else None
  config = dog_horse.get_config()
  model = transfer.from_config(config, num_classes=2)
  variables = transfer.init_variables(model, size, seed=0)
  if folded:
    from inception.models import folding
    variables = folding.fold_batchnorm(variables)
    model = _folded_transfer(model)
  rng = np.random.default_rng(0)
  batch_np = {'image': rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32),
              'label': (np.arange(batch) % 2).astype(np.int32),
              'mask': np.ones(batch, bool)}
  key = jax.random.key(0)
  if mode == 'train':
    tx = optim.make(config.optimizer, variables['params'])
    mask = param_rules.trainable_mask(variables['params'], config.optimizer.param_rules)
    state = steps.create_state(jax.device_put(variables), tx)
    b = jax.device_put({k: batch_np[k] for k in ('image', 'label')})
    compiled = steps.make_train_step(model, tx, mask, compiler_options=options).lower(
        state, b, key).compile()
    holder = {'state': state}

    def call():
      holder['state'], metrics = compiled(holder['state'], b, key)
      jax.block_until_ready(metrics)
  else:
    v = jax.device_put(variables)
    b = jax.device_put(batch_np)
    compiled = steps.make_eval_step(model, num_classes=2, compiler_options=options).lower(
        v, b).compile()

    def call():
      jax.block_until_ready(compiled(v, b))

  call()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  mem = compiled.memory_analysis()
  return {'mode': mode, 'batch': batch, 'size': size, 'folded': folded, 'xla_defaults': xla_defaults,
          'images_per_s': batch / common.median(times),
          'gflop_per_image': common.compiled_flops(compiled) / batch / 1e9,
          'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          'xla_temp_mib': getattr(mem, 'temp_size_in_bytes', 0) / 2**20}


def _folded_transfer(model):
  """The transfer model with its backbone built folded (until transfer.py has the option)."""
  from inception import transfer
  if 'fold_batchnorm' in transfer.TransferModel.__dataclass_fields__:
    return model.clone(fold_batchnorm=True)
  raise SystemExit('--folded needs transfer.TransferModel(fold_batchnorm=...), not there yet')


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batches', default='20,64,128')
  p.add_argument('--sizes', default='150,299')
  p.add_argument('--modes', default='train,eval')
  p.add_argument('--calls', type=int, default=1)
  p.add_argument('--folded', action='store_true',
                 help='backbone with BatchNorm folded (inception.models.folding)')
  p.add_argument('--xla-defaults', action='store_true',
                 help="XLA's default options instead of inception.train.xla_options (YNNPACK on)")
  p.add_argument('--one', help=argparse.SUPPRESS)  # mode,batch,size: child process.
  args = p.parse_args(argv)
  if args.one:
    mode, batch, size = args.one.split(',')
    print(json.dumps(run_one(mode, int(batch), int(size), args.calls, args.folded,
                             args.xla_defaults)))
    return
  print(common.environment())
  print(f'\n{"mode":<6s} {"batch":>5s} {"size":>5s} {"images/s":>9s} {"GFLOP/img":>9s} '
        f'{"peak RSS MiB":>12s} {"XLA temp MiB":>12s}', flush=True)
  for mode in args.modes.split(','):
    for size in (int(s) for s in args.sizes.split(',')):
      for batch in (int(b) for b in args.batches.split(',')):
        cmd = [sys.executable, __file__, '--one', f'{mode},{batch},{size}',
               '--calls', str(args.calls)] + (['--folded'] if args.folded else []) + (
                   ['--xla-defaults'] if args.xla_defaults else [])
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
        if proc.returncode:
          print(f'{mode:<6s} {batch:>5d} {size:>5d} FAILED: {proc.stderr.strip()[-300:]}')
          continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f'{mode:<6s} {batch:>5d} {size:>5d} {r["images_per_s"]:9.2f} '
              f'{r["gflop_per_image"]:9.2f} {r["peak_rss_mib"]:12.0f} {r["xla_temp_mib"]:12.0f}',
              flush=True)
  print(f'# load average at the end: {", ".join(f"{x:.2f}" for x in os.getloadavg())}')


if __name__ == '__main__':
  sys.exit(main())
