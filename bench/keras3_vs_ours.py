"""Ours vs Keras 3 on its JAX backend, side by side: backbone forward and the seed's train step.

    nice -n 5 .venv/bin/python bench/keras3_vs_ours.py [--repeats 4] [--calls 2] [--steps 3]
        [--batches 20,64] [--weights tf2015] [--skip-forward] [--skip-train]

The peer a JAX user would pick: `keras.applications.InceptionV3(weights=None, include_top=False,
input_shape=(150, 150, 3))` (Keras 3, KERAS_BACKEND=jax) cut at mixed7, frozen,
Flatten -> Dense(1024, relu) -> Dropout(0.2) -> Dense(1, sigmoid), RMSprop 1e-3, binary
cross-entropy, batch 20, 150 px. Both sides hold the same ImageNet backbone (`--weights`, the
project's converted tf2015 by default, loaded into Keras 3 by conv/BatchNorm creation order with
`tests/reference/keras_models.py`'s copy, as for tf_keras): the model is
`tests/reference/keras3_models.py`'s; the heads are each side's own random initialisation
(speed does not depend on their values).

Keras 3 runs in worker subprocesses (KERAS_BACKEND must be set before keras is imported, and
XLA reads XLA_FLAGS once per process), driven over a pipe so that every contender is timed
alternately (A B A B ...) after warm-up and compilation, each worker timing its own calls:
  keras3            XLA's default options (what `jax.jit` gives Keras 3: YNNPACK convolutions);
  keras3 +flag      the same with XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= (the
                    option `inception.train.xla_options` gives our steps: Eigen convolutions).
Ours runs in this process, compiled both with XLA's defaults (`compiler_options={}`) and with
the project's options.

Sections (seconds per call, medians over rounds; ratios per round, min..median..max):
  forward  backbone features at mixed7, batch 20 and 64: Keras' `predict_on_batch` (its own
           jitted predict function, output copied to numpy) and the backbone's
           `stateless_call` under a plain `jax.jit` (Keras' program without its per-call
           bookkeeping) vs our jitted `InceptionV3.apply` (unfolded BatchNorm, as Keras; with
           fused 1x1 units, the default, and without).
  train    the seed's train step on one in-memory batch of 20 (no augmentation): Keras'
           `train_on_batch`, `fit` over `--steps` in-memory batches, and Keras' own
           `train_step` jitted and donated as `make_train_function` does but called directly,
           vs our jitted, donated `inception.train.steps.make_train_step`.
Before timing: Keras 3's features vs ours on a fixed batch (max abs / relative difference), and
XLA's FLOP counts of each side's compiled train step and forward (a train step that
differentiated through the frozen backbone would cost ~3x the forward, not ~1.1x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import common  # bench/common.py; also puts the repo root on sys.path.
from inception.train import xla_options  # pylint: disable=g-bad-import-order
from tests.reference import keras3_models  # pylint: disable=g-bad-import-order
from tests.reference import keras_models  # pylint: disable=g-bad-import-order

BATCH = common.BATCH_SIZE
SIZE = common.IMAGE_SIZE


# --------------------------------------------------------------------------- Keras 3 worker

class _Keras3:
  """The seed's Keras 3 model and its timed operations (inside the worker process)."""

  def __init__(self, weights: str, steps: int, seed: int = 0):
    import keras
    from inception import weights as weights_lib
    pretrained = weights_lib.load(weights)
    self.model = keras3_models.build_model(
        SIZE, weights_lib.select_blocks(pretrained.variables, common.CUT), common.CUT,
        seed=seed)
    self.backbone = keras3_models.backbone_of(self.model, common.CUT)
    rng = np.random.default_rng(0)
    self.x_train = rng.uniform(0, 1, (BATCH * steps, SIZE, SIZE, 3)).astype(np.float32)
    self.y_train = (np.arange(BATCH * steps) % 2).astype(np.float32)[:, None]
    self.batches = {}
    self.info = {
        'keras': keras.__version__, 'backend': keras.backend.backend(),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'units_loaded': len(keras_models.keras_units(self.backbone)),
        'weights': f'{pretrained.source} sha256 {pretrained.sha256[:12]}',
        'trainable_weights': len(self.model.trainable_weights),
        'trainable_params': int(sum(np.prod(w.shape) for w in self.model.trainable_weights)),
        'non_trainable_params': int(sum(np.prod(w.shape)
                                        for w in self.model.non_trainable_weights)),
    }

  def _batch(self, n: int) -> np.ndarray:
    if n not in self.batches:
      self.batches[n] = common.random_images(n, SIZE, seed=n)  # Same arrays as ours.
    return self.batches[n]

  def features(self, path_in: str, path_out: str) -> dict:
    np.save(path_out, self.backbone.predict_on_batch(np.load(path_in)))
    return {}

  def forward(self, batch: int, calls: int) -> dict:
    x = self._batch(batch)
    start = time.perf_counter()
    for _ in range(calls):
      self.backbone.predict_on_batch(x)  # Returns numpy: waits for the result.
    return {'seconds': (time.perf_counter() - start) / calls}

  def _values(self, variables) -> list:
    # Copies: Keras' predict/train functions donate (and so delete) the variables' arrays.
    import jax.numpy as jnp
    return [jnp.array(v.value, copy=True) for v in variables]

  def forward_jit(self, batch: int, calls: int) -> dict:
    """The backbone's `stateless_call` under a plain `jax.jit`: Keras' compiled forward
    without `predict_on_batch`'s per-call work (state gathering, donation, sync, numpy copy)."""
    import jax
    if not hasattr(self, '_fwd'):
      b = self.backbone
      self._fwd = jax.jit(lambda tv, ntv, x: b.stateless_call(tv, ntv, x, training=False)[0])
      self._fwd_vars = (self._values(b.trainable_variables),
                        self._values(b.non_trainable_variables))
    x = jax.device_put(self._batch(batch))
    start = time.perf_counter()
    for _ in range(calls):
      self._fwd(*self._fwd_vars, x).block_until_ready()
    return {'seconds': (time.perf_counter() - start) / calls}

  def train_jit(self, calls: int) -> dict:
    """Keras' own `train_step` jitted and donated as `make_train_function` does, called
    directly on device-resident state and batch (no `train_on_batch` bookkeeping)."""
    import jax
    if not hasattr(self, '_train'):
      m = self.model
      self.train_on_batch(1)  # Builds the optimizer variables.
      self._train = jax.jit(m.train_step, donate_argnums=0)
      self._state = (self._values(m.trainable_variables),
                     self._values(m.non_trainable_variables),
                     self._values(m.optimizer.variables), self._values(m.metrics_variables))
      self._data = (jax.device_put(self.x_train[:BATCH]), jax.device_put(self.y_train[:BATCH]),
                    None)
    start = time.perf_counter()
    for _ in range(calls):
      logs, self._state = self._train(self._state, self._data)
      jax.block_until_ready(logs)
    return {'seconds': (time.perf_counter() - start) / calls}

  def train_on_batch(self, calls: int) -> dict:
    xb, yb = self.x_train[:BATCH], self.y_train[:BATCH]
    start = time.perf_counter()
    for _ in range(calls):
      logs = self.model.train_on_batch(xb, yb, return_dict=True)  # Python floats: synced.
    return {'seconds': (time.perf_counter() - start) / calls, 'loss': float(logs['loss'])}

  def fit(self) -> dict:
    start = time.perf_counter()
    history = self.model.fit(self.x_train, self.y_train, batch_size=BATCH, epochs=1,
                             shuffle=False, verbose=0)
    steps = len(self.x_train) // BATCH
    return {'seconds': (time.perf_counter() - start) / steps,
            'loss': float(history.history['loss'][-1])}

  def flops(self) -> dict:
    """XLA's FLOPs of Keras' jitted train step (as `make_train_function` jits it) and forward."""
    import jax
    m = self.model
    self.train_on_batch(1)  # Builds the optimizer variables.
    state = ([v.value for v in m.trainable_variables],
             [v.value for v in m.non_trainable_variables],
             [v.value for v in m.optimizer.variables], [v.value for v in m.metrics_variables])
    data = (jax.numpy.asarray(self.x_train[:BATCH]), jax.numpy.asarray(self.y_train[:BATCH]),
            None)
    train = jax.jit(m.train_step).lower(state, data).compile()
    b = self.backbone
    fwd = jax.jit(lambda tv, ntv, x: b.stateless_call(tv, ntv, x, training=False)[0]).lower(
        [v.value for v in b.trainable_variables], [v.value for v in b.non_trainable_variables],
        data[0]).compile()
    return {'train_step_flops': common.compiled_flops(train),
            'forward_flops': common.compiled_flops(fwd),
            'trainable_state_arrays': len(state[0])}

  def warmup(self, batches: list[int]) -> dict:
    start = time.perf_counter()
    for n in batches:
      self.forward(n, 1)
      self.forward_jit(n, 1)
    self.train_on_batch(1)
    self.train_jit(1)
    self.fit()
    return {'seconds': time.perf_counter() - start}


def worker_main(weights: str, steps: int) -> None:
  """JSON lines on stdin -> JSON lines on the original stdout; anything else printed goes to
  stderr, so Keras' or XLA's messages cannot corrupt the protocol."""
  proto = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  k3 = None
  for line in sys.stdin:
    msg = json.loads(line)
    cmd = msg.pop('cmd')
    try:
      if cmd == 'setup':
        k3 = _Keras3(weights, steps)
        reply = k3.info
      elif cmd == 'ping':
        reply = {}
      else:
        reply = getattr(k3, cmd)(**msg)
      proto.write(json.dumps({'ok': True, **reply}) + '\n')
    except Exception as e:  # pylint: disable=broad-except
      proto.write(json.dumps({'ok': False, 'error': f'{type(e).__name__}: {e}'}) + '\n')


class Worker:
  """A Keras 3 (jax backend) worker subprocess; `call` sends one command, returns its reply."""

  def __init__(self, name: str, xla_flags: str, weights: str, steps: int):
    self.name = name
    env = dict(os.environ, KERAS_BACKEND='jax', XLA_FLAGS=xla_flags)
    env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Keeps the workers' C++ start-up logs short.
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--worker', '--weights', weights,
         '--steps', str(steps)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, bufsize=1)

  def call(self, cmd: str, **kwargs) -> dict:
    self.proc.stdin.write(json.dumps({'cmd': cmd, **kwargs}) + '\n')
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'Keras 3 worker {self.name!r} exited (rc {self.proc.poll()}); see '
                         'its stderr above')
    reply = json.loads(line)
    if not reply.pop('ok'):
      raise RuntimeError(f'Keras 3 worker {self.name!r}: {cmd}: {reply["error"]}')
    return reply

  def timer(self, cmd: str, **kwargs):
    """A contender for `common.rounds`: runs `cmd`, returns the seconds the worker measured."""
    return lambda: self.call(cmd, **kwargs)['seconds']

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.close()
      self.proc.wait(timeout=60)


# --------------------------------------------------------------------------- ours and the runs

def check_features(workers: dict, variables, options) -> dict:
  """Keras 3's mixed7 features vs ours (ImageNet weights) on a fixed batch of 4 images."""
  import jax
  from inception.models import inception_v3 as model_lib
  x = common.random_images(4, SIZE, seed=1)
  model = model_lib.InceptionV3(stop_at=common.CUT)
  ours = {
      'ours, XLA defaults': np.asarray(
          jax.jit(model.apply, compiler_options={})(variables, x)),
      'ours, project options': np.asarray(
          jax.jit(model.apply, compiler_options=options)(variables, x)),
  }
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    np.save(f'{tmp}/x.npy', x)
    for name, w in workers.items():
      w.call('features', path_in=f'{tmp}/x.npy', path_out=f'{tmp}/{name}.npy')
      want = np.load(f'{tmp}/{name}.npy')
      for ours_name, got in ours.items():
        diff = np.abs(got - want).max()
        out[f'{name} vs {ours_name}'] = (float(diff), float(diff / np.abs(want).max()))
        print(f'# features {name} vs {ours_name}: max abs diff {diff:.2e}, relative to max '
              f'|feature| {np.abs(want).max():.2f}: {diff / np.abs(want).max():.1e}', flush=True)
  return out


def ours_train(variables_backbone, options):
  """Our seed-recipe train step (configs/dog_horse), compiled with XLA defaults and `options`."""
  import jax
  _, _, step, state = common.seed_train_setup(variables_backbone)
  rng = np.random.default_rng(0)
  batch = jax.device_put({'image': rng.uniform(0, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32),
                          'label': (np.arange(BATCH) % 2).astype(np.int32)})
  key = jax.random.key(0)
  lowered = step.lower(state, batch, key)
  return {'defaults': lowered.compile(), 'project': lowered.compile(compiler_options=options),
          'state': state, 'batch': batch, 'key': key}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=4, help='alternating rounds per section')
  p.add_argument('--calls', type=int, default=2, help='calls per timing (forward, train step)')
  p.add_argument('--steps', type=int, default=3, help='batches per Keras fit timing')
  p.add_argument('--batches', default='20,64', help='forward batch sizes')
  p.add_argument('--weights', default='tf2015', help='inception.weights.load name or path')
  p.add_argument('--skip-forward', action='store_true')
  p.add_argument('--skip-train', action='store_true')
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    return worker_main(args.weights, args.steps)

  def measure(contenders, items: int, baseline: str, pairs: list[tuple[str, str]]) -> None:
    """Alternating rounds; median rates and, per (ours, keras) pair, the per-round ratios."""
    times = common.rounds(contenders, args.repeats)
    common.report_rates(times, items, baseline=baseline)
    common.report_ratios(times, pairs)

  t0 = time.perf_counter()
  print(common.environment(), flush=True)
  base_flags = os.environ.get('XLA_FLAGS', '')
  if 'ynn_fusion_type' in base_flags:
    raise SystemExit('XLA_FLAGS already sets the YNNPACK option: the defaults would not be '
                     'the defaults')
  # Started first: they load and compile while this process does the same.
  our_flags = xla_options.as_flags(xla_options.compiler_options('cpu'))
  workers = {'keras3': Worker('keras3', base_flags, args.weights, args.steps),
             'keras3 +flag': Worker('keras3 +flag',
                                    f'{base_flags} {our_flags}'.strip(),
                                    args.weights, args.steps)}
  try:
    import jax
    from inception import weights as weights_lib
    from inception.models import inception_v3 as model_lib
    options = xla_options.compiler_options('cpu')
    pretrained = weights_lib.load(args.weights)
    variables = jax.device_put(weights_lib.select_blocks(pretrained.variables, common.CUT))
    print(f'# weights: {pretrained.source} sha256 {pretrained.sha256[:12]}; ours XLA options '
          f'{options}', flush=True)
    for name, w in workers.items():
      print(f'# {name}: {w.call("setup")}', flush=True)
    batches = [int(b) for b in args.batches.split(',')] if not args.skip_forward else []
    for name, w in workers.items():
      print(f'# {name} warm-up (compilation): {w.call("warmup", batches=batches)["seconds"]:.1f} s',
            flush=True)
    ping = min(common.timed(lambda: workers['keras3'].call('ping'))() for _ in range(20))
    print(f'# pipe round trip to a worker: {ping * 1e3:.2f} ms (not in the timings)')
    check_features(workers, variables, options)

    train = ours_train(variables, options) if not args.skip_train else None
    if train is not None:
      k3_flops = workers['keras3'].call('flops')
      ours_fwd = jax.jit(model_lib.InceptionV3(stop_at=common.CUT).apply).lower(
          variables, train['batch']['image']).compile()
      print(f'# GFLOP per batch of {BATCH} (XLA cost analysis): keras3 train step '
            f'{k3_flops["train_step_flops"] / 1e9:.1f}, forward '
            f'{k3_flops["forward_flops"] / 1e9:.1f} ({k3_flops["trainable_state_arrays"]} '
            f'trainable arrays); ours train step {common.compiled_flops(train["project"]) / 1e9:.1f}'
            f', forward {common.compiled_flops(ours_fwd) / 1e9:.1f}', flush=True)

    for batch in batches:
      x = jax.device_put(common.random_images(batch, SIZE, seed=batch))
      fused = jax.jit(model_lib.InceptionV3(stop_at=common.CUT).apply).lower(variables, x)
      unfused = jax.jit(model_lib.InceptionV3(stop_at=common.CUT, fuse_1x1=False).apply).lower(
          variables, x)
      fns = {'ours, XLA defaults': fused.compile(compiler_options={}),
             'ours, project options': fused.compile(compiler_options=options),
             'ours, project options, 1x1 unfused': unfused.compile(compiler_options=options)}
      contenders = {
          f'{name} {what}': w.timer(cmd, batch=batch, calls=args.calls)
          for what, cmd in (('predict_on_batch', 'forward'), ('stateless jit', 'forward_jit'))
          for name, w in workers.items()}
      for name, f in fns.items():
        f(variables, x).block_until_ready()  # Warm-up.
        contenders[name] = common.timed(lambda f=f: f(variables, x).block_until_ready(),
                                        args.calls)
      print(f'\nforward, backbone to {common.CUT}, batch {batch}, {SIZE} px, images/s '
            f'({args.calls} calls per timing)', flush=True)
      measure(contenders, batch, 'keras3 predict_on_batch',
              [('ours, project options', 'keras3 predict_on_batch'),
               ('ours, XLA defaults', 'keras3 predict_on_batch'),
               ('ours, project options', 'keras3 +flag predict_on_batch'),
               ('ours, XLA defaults', 'keras3 stateless jit'),
               ('ours, project options, 1x1 unfused', 'keras3 +flag stateless jit'),
               ('ours, project options', 'keras3 +flag stateless jit'),
               ('keras3 +flag predict_on_batch', 'keras3 predict_on_batch'),
               ('keras3 stateless jit', 'keras3 predict_on_batch')])

    if train is not None:
      holder = {'state': train['state']}

      def ours_step(compiled):
        def run():
          holder['state'], metrics = compiled(holder['state'], train['batch'], train['key'])
          jax.block_until_ready(metrics)
        run()  # Warm-up.
        return common.timed(run, args.calls)

      contenders = {
          'keras3 train_on_batch': workers['keras3'].timer('train_on_batch', calls=args.calls),
          'keras3 +flag train_on_batch': workers['keras3 +flag'].timer('train_on_batch',
                                                                       calls=args.calls),
          f'keras3 fit ({args.steps} batches)': workers['keras3'].timer('fit'),
          'keras3 +flag train_step jit': workers['keras3 +flag'].timer('train_jit',
                                                                       calls=args.calls),
          'ours step, XLA defaults': ours_step(train['defaults']),
          'ours step, project options': ours_step(train['project']),
      }
      print(f'\ntrain step, one in-memory batch of {BATCH}, {SIZE} px, images/s '
            f'({args.calls} steps per timing; fit: seconds per batch)', flush=True)
      measure(contenders, BATCH, 'keras3 train_on_batch',
              [('ours step, project options', 'keras3 train_on_batch'),
               ('ours step, XLA defaults', 'keras3 train_on_batch'),
               ('ours step, project options', 'keras3 +flag train_on_batch'),
               ('ours step, project options', f'keras3 fit ({args.steps} batches)'),
               ('ours step, project options', 'keras3 +flag train_step jit'),
               ('keras3 +flag train_on_batch', 'keras3 train_on_batch')])
  finally:
    for w in workers.values():
      w.close()
  print(f'\n# load average at the end: {", ".join(f"{x:.2f}" for x in os.getloadavg())}; '
        f'{time.perf_counter() - t0:.0f} s in all')


if __name__ == '__main__':
  sys.exit(main())
