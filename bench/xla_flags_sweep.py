"""Which XLA:CPU options and model forms make the frozen backbone forward fast, vs Keras.

    .venv/bin/python bench/xla_flags_sweep.py [--batch 20] [--repeats 5] [--variants a,b,...]

Every variant is the mixed7 backbone forward at 150 px, compiled in this one process with its
own per-compilation XLA options (`jit(...).lower(...).compile(compiler_options=...)`, the same
DebugOptions fields XLA_FLAGS sets), and timed alternately with Keras' forward and each other.
Outputs are checked equal to Keras' (<= 1e-4 relative; bfloat16 variants BF16_TOLERANCE) before
timing.

Options that exist in jaxlib 0.10.2 (strings of libjax_common.so; XLA_FLAGS=--help is not
available): xla_cpu_use_onednn, xla_cpu_use_xnnpack, xla_cpu_multi_thread_eigen,
xla_cpu_enable_fast_math, xla_cpu_experimental_{ynn,xnn,onednn}_fusion_type (repeated enum:
LIBRARY_FUSION_TYPE_{DOT,ELTWISE,REDUCE,INDIVIDUAL_DOT,INDIVIDUAL_CONVOLUTION}, comma-separated
in compiler_options; XLA_FLAGS takes lower-case names). xla_cpu_use_thunk_runtime is "no longer
supported". Also tried: xla_cpu_enable_concurrency_optimized_scheduler, xla_cpu_prefer_vector_width
(512), YNNPACK for dots only, bfloat16 computation (`bfloat16` variants: checked to
BF16_TOLERANCE). oneDNN fusions (`xla_cpu_use_onednn` with xla_cpu_experimental_onednn_fusion_type
DOT) take only dots: XLA turns 1x1 convolutions into dots after its library-fusion pass, so
they stay Eigen; no convolution reaches oneDNN in this jaxlib. jaxlib 0.10.2 by default runs
every convolution and dot as its own YNNPACK fusion (`__ynn_fusion`), with bias add and ReLU as
separate XLA loop fusions. `unfused_1x1` variants
run each block's 1x1 units one by one (`InceptionV3(fuse_1x1=False)`) instead of as one conv.
"""

from __future__ import annotations

import argparse
import sys

import common  # bench/common.py; also puts the repo root on sys.path.
from tests.reference import keras_models  # pylint: disable=g-bad-import-order

common.quiet_tensorflow()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from inception.models import folding
from inception.models import inception_v3 as model_lib

_T = 'LIBRARY_FUSION_TYPE_'
YNN = 'xla_cpu_experimental_ynn_fusion_type'
# name -> (BatchNorm folded?, compiler options, model overrides)
VARIANTS = {
    'default': (False, {}, {}),
    'folded': (True, {}, {}),
    'folded+ynn_eltwise': (True, {YNN: f'{_T}INDIVIDUAL_CONVOLUTION,{_T}INDIVIDUAL_DOT,'
                                       f'{_T}ELTWISE'}, {}),
    'folded+ynn_eltwise_reduce': (True, {YNN: f'{_T}INDIVIDUAL_CONVOLUTION,{_T}INDIVIDUAL_DOT,'
                                              f'{_T}ELTWISE,{_T}REDUCE'}, {}),
    'no_ynn(eigen)': (False, {YNN: ''}, {}),
    'no_ynn(eigen)+unfused_1x1': (False, {YNN: ''}, {'fuse_1x1': False}),
    'folded+no_ynn(eigen)': (True, {YNN: ''}, {}),
    'folded+no_ynn(eigen)+unfused_1x1': (True, {YNN: ''}, {'fuse_1x1': False}),
    'folded+no_ynn+single_thread_eigen': (True, {YNN: '', 'xla_cpu_multi_thread_eigen': False},
                                          {}),
    'folded+fast_math': (True, {'xla_cpu_enable_fast_math': True}, {}),
    'folded+onednn': (True, {'xla_cpu_use_onednn': True}, {}),
    'folded+xnnpack': (True, {'xla_cpu_use_xnnpack': True}, {}),
    'folded+single_thread_eigen': (True, {'xla_cpu_multi_thread_eigen': False}, {}),
    'folded+no_ynn+concurrent_scheduler': (
        True, {YNN: '', 'xla_cpu_enable_concurrency_optimized_scheduler': True}, {}),
    'folded+no_ynn+concurrent+single_thread_eigen': (
        True, {YNN: '', 'xla_cpu_enable_concurrency_optimized_scheduler': True,
               'xla_cpu_multi_thread_eigen': False}, {}),
    'folded+no_ynn+vector512': (True, {YNN: '', 'xla_cpu_prefer_vector_width': 512}, {}),
    'folded+ynn_dot_only': (True, {YNN: f'{_T}INDIVIDUAL_DOT'}, {}),
    # Frozen-feature extraction in bfloat16 (parameters float32, computation bfloat16).
    'folded+no_ynn+bfloat16': (True, {YNN: ''}, {'dtype': jnp.bfloat16}),
    'folded+bfloat16': (True, {}, {'dtype': jnp.bfloat16}),
}
BF16_TOLERANCE = 5e-2  # Relative to the features' largest value; float32 variants: 1e-4.


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=20)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--variants', default=','.join(VARIANTS))
  args = p.parse_args(argv)
  print(common.environment())
  _, keras_features, variables = keras_models.random_reference(common.IMAGE_SIZE, common.CUT)
  folded_vars = jax.device_put(folding.fold_batchnorm(variables))
  variables = jax.device_put(variables)
  x_np = common.random_images(args.batch, common.IMAGE_SIZE)
  x = jax.device_put(x_np)
  model = model_lib.InceptionV3(stop_at=common.CUT)
  keras_fn = tf.function(lambda t: keras_features(t, training=False))
  contenders = {'keras (tf.function)': lambda: keras_fn(x_np).numpy()}
  reference = keras_fn(x_np).numpy()
  for name in args.variants.split(','):
    fold, options, overrides = VARIANTS[name]
    m, v = (folding.folded_model(model), folded_vars) if fold else (model, variables)
    m = m.clone(**overrides)
    # A fresh function per variant: jit caches traces per function object.
    lowered = jax.jit(lambda v, x, m=m: m.apply(v, x)).lower(v, x)
    try:
      compiled = lowered.compile(compiler_options=options)
    except Exception as e:  # pylint: disable=broad-except
      print(f'  {name}: does not compile: {str(e).splitlines()[0][:200]}')
      continue
    got = np.asarray(compiled(v, x)).astype(np.float32)
    err = np.abs(got - reference).max() / np.abs(reference).max()
    print(f'  {name}: options {options}, max relative difference vs Keras {err:.1e}', flush=True)
    assert err <= (BF16_TOLERANCE if 'dtype' in overrides else 1e-4), (name, err)
    contenders[name] = lambda c=compiled, v=v: c(v, x).block_until_ready()
  print(f'\nforward to {common.CUT}, batch {args.batch}, {common.IMAGE_SIZE} px, '
        f'{args.repeats} alternating repeats', flush=True)
  times = common.alternate(contenders, args.repeats)
  common.report_rates(times, args.batch, baseline='keras (tf.function)')


if __name__ == '__main__':
  sys.exit(main())
