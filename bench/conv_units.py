"""Where the backbone forward's time goes, op by op: ours (XLA:CPU) vs TensorFlow (Keras 2's
kernels), each conv unit of the mixed7 backbone timed on its own, and Keras' whole forward as
oneDNN's own log times it.

    .venv/bin/python bench/conv_units.py [--batch 20] [--size 150] [--repeats 7]
        [--options eigen,eigen+onednn_dot] [--dot-1x1] [--skip-keras-log]

Every convolution of the folded backbone (BatchNorm folded: conv + bias + ReLU, what a frozen
unit computes) is read off the jaxpr of our forward, with its shapes, strides and padding, and
run alone: as an XLA program per `--options` entry (`xla_options.CANDIDATES` names), and as
`tf.nn.conv2d + bias_add + relu` in a `tf.function` (TF's CPU convolutions: oneDNN on x86
builds). Units are grouped by kernel shape; the table prints milliseconds per batch and the
rate in GFLOP/s. Alternated A B A B ..., medians, one untimed call before each timing (`lead_in`:
a short op timed right after another library's is slowed by that library's spinning threads).
The sum over units is not the forward's time (pools, concatenations and the data movement
between units are left out); `bench/keras_vs_ours.py` times the whole forward.

The last table is the profile of Keras 2's own forward (`keras_models.random_reference`, one
warm call of its `tf.function`), from `ONEDNN_VERBOSE=1` in a subprocess: every oneDNN
primitive TF ran, with its implementation (e.g. `brg_conv_fwd:avx512_core`) and milliseconds,
summed by kernel shape. The verbose log itself slows the calls a little.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys

import common  # bench/common.py; also puts the repo root on sys.path.

common.quiet_tensorflow()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from inception.models import folding
from inception.models import inception_v3 as model_lib
from inception.train import xla_options


def conv_specs(size: int, batch: int) -> list[dict]:
  """The forward's convolutions, in order: lhs/rhs shapes, strides, padding (from the jaxpr)."""
  model = folding.folded_model(model_lib.InceptionV3(stop_at=common.CUT))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1, size, size, 3))))
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(model.apply)(variables, x)
  specs = []

  def visit(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
        specs.append({'lhs': lhs, 'rhs': rhs, 'strides': tuple(eqn.params['window_strides']),
                      'padding': tuple(tuple(p) for p in eqn.params['padding'])})
      for value in eqn.params.values():  # Nested jaxprs (pjit, custom_jvp, ...).
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          sub = getattr(sub, 'jaxpr', sub)
          if hasattr(sub, 'eqns'):
            visit(sub)
  visit(jaxpr.jaxpr)
  return specs


def group(spec: dict) -> str:
  kh, kw = spec['rhs'][:2]
  return f'{kh}x{kw}' + ('/2' if spec['strides'][0] == 2 else '')


def flops(spec: dict) -> float:
  n, h, w, _ = spec['lhs']
  kh, kw, cin, cout = spec['rhs']
  sh, sw = spec['strides']
  (pt, pb), (pl, pr) = spec['padding']
  oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  return 2.0 * n * oh * ow * kh * kw * cin * cout


_MARK = '=== keras forward'


def keras_forward_worker(batch: int, size: int) -> None:
  """Keras 2's backbone forward: warm-up calls, then one call between two marker lines."""
  from tests.reference import keras_models  # pylint: disable=g-import-not-at-top
  _, features, _ = keras_models.random_reference(size, common.CUT)
  fn = tf.function(lambda x: features(x, training=False))
  x = common.random_images(batch, size)
  for _ in range(3):
    fn(x).numpy()
  print(_MARK, flush=True)
  fn(x).numpy()
  print(_MARK, flush=True)


def keras_profile(batch: int, size: int) -> None:
  """Prints Keras' forward, primitive by primitive as oneDNN's verbose log times it."""
  out = subprocess.run([sys.executable, __file__, '--keras-worker', f'--batch={batch}',
                        f'--size={size}'], env=dict(os.environ, ONEDNN_VERBOSE='1'),
                       capture_output=True, text=True, check=True).stdout
  lines = out.split(_MARK)[1].splitlines()
  ms, count, impls = collections.defaultdict(float), collections.Counter(), collections.Counter()
  for line in lines:
    f = line.strip().split(',')
    if len(f) < 6 or f[3] != 'exec':
      continue
    kind = f[5]
    if kind == 'convolution':
      desc = f[-2]
      kh, kw, sh = (re.search(rf'{k}(\d+)', desc).group(1) for k in ('kh', 'kw', 'sh'))
      kind = f'{kh}x{kw}' + ('/2' if sh == '2' else '')
      impls[f[6]] += 1
    ms[kind] += float(f[-1])
    count[kind] += 1
  print(f'\nKeras 2 forward (batch {batch}, {size} px), oneDNN verbose log: '
        f'{sum(ms.values()):.1f} ms in {sum(count.values())} primitives; convolutions by '
        f'{dict(impls)}')
  print('| primitive | count | ms |\n|---|---|---|')
  for kind in sorted(ms, key=lambda k: -ms[k]):
    print(f'| {kind} | {count[kind]} | {ms[kind]:.2f} |')


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=common.BATCH_SIZE)
  p.add_argument('--size', type=int, default=common.IMAGE_SIZE)
  p.add_argument('--repeats', type=int, default=7)
  p.add_argument('--options', default='eigen')
  p.add_argument('--dot-1x1', action='store_true',
                 help='our stride-1 1x1 units as a dot (einsum) instead of a convolution')
  p.add_argument('--skip-keras-log', action='store_true')
  p.add_argument('--keras-worker', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.keras_worker:
    return keras_forward_worker(args.batch, args.size)
  print(common.environment())
  specs = conv_specs(args.size, args.batch)
  rng = np.random.default_rng(0)
  names = args.options.split(',')
  totals = collections.defaultdict(lambda: collections.defaultdict(float))
  total_flops = collections.defaultdict(float)
  for spec in specs:
    x = rng.uniform(0, 1, spec['lhs']).astype(np.float32)
    k = (rng.standard_normal(spec['rhs']) * 0.05).astype(np.float32)
    b = rng.standard_normal(spec['rhs'][-1]).astype(np.float32)

    def ours(x, k, b, spec=spec):
      if args.dot_1x1 and spec['rhs'][:2] == (1, 1) and spec['strides'] == (1, 1):
        y = jnp.einsum('nhwc,co->nhwo', x, k[0, 0])
      else:
        y = jax.lax.conv_general_dilated(x, k, spec['strides'], spec['padding'],
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      return jax.nn.relu(y + b)
    jx, jk, jb = (jax.device_put(a) for a in (x, k, b))
    compiled = {name: jax.jit(ours).lower(jx, jk, jb).compile(
        compiler_options=xla_options.CANDIDATES[name]) for name in names}
    contenders = {name: lambda c=c: c(jx, jk, jb).block_until_ready()
                  for name, c in compiled.items()}
    pads = [list(p) for p in spec['padding']]
    # The weights are constants captured by the TF graph, not arguments of each call.
    tk, tb = tf.constant(k), tf.constant(b)
    tf_fn = tf.function(lambda x, spec=spec, pads=pads: tf.nn.relu(tf.nn.bias_add(
        tf.nn.conv2d(x, tk, spec['strides'], [[0, 0]] + pads + [[0, 0]]), tb)))
    tx = tf.constant(x)
    contenders['tensorflow'] = lambda: tf_fn(tx).numpy()
    ref = tf_fn(tx).numpy()
    for name, c in compiled.items():
      got = np.asarray(c(jx, jk, jb))
      err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6)
      assert err < 1e-4, (spec, name, err)
    times = common.alternate(contenders, args.repeats, warmup=2, lead_in=True)
    g = group(spec)
    total_flops[g] += flops(spec)
    for name, ts in times.items():
      totals[g][name] += common.median(ts)
  columns = names + ['tensorflow']
  print(f'\n{len(specs)} convolutions, batch {args.batch}, {args.size} px; ms per batch '
        '(GFLOP/s):')
  print('| kernel | units | GFLOP | ' + ' | '.join(columns) + f' | {names[0]} / tensorflow |')
  print('|---' * (len(columns) + 4) + '|')
  counts = collections.Counter(group(s) for s in specs)
  grand = collections.defaultdict(float)
  for g in sorted(totals, key=lambda g: -total_flops[g]):
    cells = []
    for c in columns:
      grand[c] += totals[g][c]
      cells.append(f'{1e3 * totals[g][c]:.2f} ({total_flops[g] / totals[g][c] / 1e9:.0f})')
    print(f'| {g} | {counts[g]} | {total_flops[g] / 1e9:.2f} | ' + ' | '.join(cells)
          + f' | {totals[g]["tensorflow"] / totals[g][names[0]]:.2f}x |')
  all_flops = sum(total_flops.values())
  print(f'| all | {len(specs)} | {all_flops / 1e9:.2f} | ' + ' | '.join(
      f'{1e3 * grand[c]:.2f} ({all_flops / grand[c] / 1e9:.0f})' for c in columns)
      + f' | {grand["tensorflow"] / grand[names[0]]:.2f}x |')
  if not args.skip_keras_log:
    keras_profile(args.batch, args.size)


if __name__ == '__main__':
  main()
