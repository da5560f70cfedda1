"""The feature cache's Flatten-head train step alone: what its time is made of, variant by variant.

    .venv/bin/python bench/head_step.py [--repeats 8]

The seed recipe's head (Flatten -> Dense(37632 -> 1024) -> Dropout -> Dense(1), RMSprop 1e-3)
on cached mixed7 features at 150 px, batch 20 (`transfer.HeadOnly`, the step the feature cache
trains with). Its 154 MB Dense kernel makes the step memory-bound, so the variants are about
passes over that kernel:

  project           the trainer's step: non-finite guard on, `inception.train.xla_options` (Eigen)
  no guard          guard_nonfinite=False: no read of the gradient before the update
  xla defaults      XLA's default options (every dot a YNNPACK fusion)
  ynn dot+eltwise   YNNPACK dots with fused element-wise consumers (could fuse RMSprop into the
                    gradient's matmul), with and without fused reductions

Each variant takes two steps from the same state first and its params are checked against the
project step's (<= 1e-6); then the variants are timed alternately (one step per timing, medians).
Also prints the measured copy bandwidth and the time one pass over the kernel takes at it.
About 2 min on 2 cores; synthetic features, random weights (no files needed).
"""

from __future__ import annotations

import argparse
import statistics

import common  # bench/common.py; also puts the repo root on sys.path.

common.quiet_tensorflow()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

_T = 'LIBRARY_FUSION_TYPE_'
_YNN = 'xla_cpu_experimental_ynn_fusion_type'
# name -> (guard_nonfinite, compiler_options; None = the project's `xla_options`)
VARIANTS = {
    'project': (True, None),
    'no guard': (False, None),
    'xla defaults': (True, {}),
    'ynn dot+eltwise': (True, {_YNN: f'{_T}DOT,{_T}ELTWISE'}),
    'ynn dot+eltwise+reduce': (True, {_YNN: f'{_T}DOT,{_T}ELTWISE,{_T}REDUCE'}),
}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=8)
  args = p.parse_args(argv)
  print(common.environment(), flush=True)
  from configs import dog_horse
  from inception.train import steps
  from inception import transfer
  import feature_cache  # bench/feature_cache.py: the step's inputs, copy_bandwidth.

  config = dog_horse.get_config()
  config.data.source = 'synthetic'
  config.model.weights = 'random'
  s, repl, dsh, batch, key = feature_cache.head_step_inputs(config)

  compiled, states, reference = {}, {}, None
  for name, (guard, options) in VARIANTS.items():
    step = steps.make_train_step(transfer.HeadOnly(s.model), s.tx, s.mask, guard_nonfinite=guard,
                                 state_sharding=repl, batch_sharding=dsh,
                                 compiler_options=options)
    compiled[name] = step.lower(s.state, batch, key).compile()
    state = jax.tree.map(lambda x: x.copy(), s.state)  # Each variant donates its own copy.
    for _ in range(2):
      state, _ = compiled[name](state, batch, key)
    params = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    if reference is None:
      reference = params
      print(f'head step: {common.compiled_flops(compiled[name]) / 1e9:.2f} GFLOP (XLA cost '
            'analysis)', flush=True)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(params, reference))
    print(f'  {name}: params after 2 steps differ from the project step by {diff:.1e}',
          flush=True)
    assert diff <= 1e-6, (name, diff)
    states[name] = state

  def run(name):
    states[name], metrics = compiled[name](states[name], batch, key)
    jax.block_until_ready(metrics)
  times = common.alternate({name: (lambda n=name: run(n)) for name in VARIANTS}, args.repeats)
  print(f'\nFlatten-head step on cached features, batch {config.train.batch_size}, '
        f'{args.repeats} alternating repeats (median ms, range):')
  for name, ts in times.items():
    print(f'  {name:24s} {1e3 * statistics.median(ts):7.1f} ms  '
          f'({1e3 * min(ts):.1f}-{1e3 * max(ts):.1f})')
  kernel_bytes = feature_cache.FLATTEN_KERNEL_BYTES
  bandwidth = feature_cache.copy_bandwidth(kernel_bytes)
  one_pass = kernel_bytes / bandwidth
  print(f'copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write): one pass over the '
        f'{kernel_bytes / 1e6:.0f} MB kernel takes {1e3 * one_pass:.1f} ms; 7 passes '
        f'{7e3 * one_pass:.0f} ms, 8 passes {8e3 * one_pass:.0f} ms')


if __name__ == '__main__':
  main()
