"""Does splitting the batch help our backbone forward on CPU? Chunks and host devices vs one batch.

    .venv/bin/python bench/forward_batching.py [--batch 64] [--repeats 6]
    XLA_FLAGS=--xla_force_host_platform_device_count=2 .venv/bin/python bench/forward_batching.py

Contenders (mixed7 backbone at 150 px, BatchNorm folded, Eigen convolutions as in
bench/keras_vs_ours.py, random Keras weights copied in), timed alternately with Keras' forward:
one jitted batch on one device; the batch as 2 and 4 chunks through `lax.map`; and, when JAX
sees several host devices, the batch data-parallel over them (`jax.sharding`, with
multi-threaded Eigen on and off). Outputs are checked equal to the one-batch forward first.
"""

from __future__ import annotations

import argparse

import common  # bench/common.py; also puts the repo root on sys.path.

common.quiet_tensorflow()

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from inception.models import folding
from inception.models import inception_v3 as model_lib
from inception.train import xla_options
from tests.reference import keras_models


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--repeats', type=int, default=6)
  args = p.parse_args(argv)
  print(common.environment())
  _, keras_features, variables = keras_models.random_reference(common.IMAGE_SIZE, common.CUT)
  variables = folding.fold_batchnorm(variables)
  net = folding.folded_model(model_lib.InceptionV3(stop_at=common.CUT))
  options = xla_options.compiler_options('cpu')
  x_np = common.random_images(args.batch, common.IMAGE_SIZE, seed=args.batch)
  device = jax.devices()[0]
  v1, x1 = jax.device_put(variables, device), jax.device_put(x_np, device)
  one = jax.jit(net.apply).lower(v1, x1).compile(compiler_options=options)
  reference = np.asarray(one(v1, x1))
  keras_fn = tf.function(lambda t: keras_features(t, training=False))
  contenders = {'keras (tf.function)': lambda: keras_fn(x_np).numpy(),
                'ours, one batch': lambda: one(v1, x1).block_until_ready()}

  def chunked(v, x, n):
    ys = jax.lax.map(lambda c: net.apply(v, c), x.reshape(n, -1, *x.shape[1:]))
    return ys.reshape(-1, *ys.shape[2:])
  for n in (2, 4):
    if args.batch % n == 0:
      f = jax.jit(chunked, static_argnums=2).lower(v1, x1, n).compile(compiler_options=options)
      np.testing.assert_allclose(np.asarray(f(v1, x1)), reference, rtol=1e-4, atol=1e-4)
      contenders[f'ours, {n} chunks of {args.batch // n}'] = (
          lambda f=f: f(v1, x1).block_until_ready())
  devices = jax.devices()
  if len(devices) > 1 and args.batch % len(devices) == 0:
    mesh = Mesh(np.array(devices), ('data',))
    vr = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    xs = jax.device_put(x_np, NamedSharding(mesh, PartitionSpec('data')))
    for threads in (True, False):
      f = jax.jit(net.apply).lower(vr, xs).compile(
          compiler_options=dict(options, xla_cpu_multi_thread_eigen=threads))
      np.testing.assert_allclose(np.asarray(f(vr, xs)), reference, rtol=1e-4, atol=1e-4)
      contenders[f'ours, {len(devices)} devices, multi-thread Eigen {threads}'] = (
          lambda f=f: f(vr, xs).block_until_ready())
  print(f'\nforward, backbone to {common.CUT}, batch {args.batch}, {common.IMAGE_SIZE} px')
  common.report_rates(common.alternate(contenders, args.repeats), args.batch,
                      baseline='keras (tf.function)')


if __name__ == '__main__':
  main()
