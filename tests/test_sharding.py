"""Data parallel train/eval steps on 4 simulated CPU devices match the 1-device results."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
  import json, sys
  import jax, numpy as np
  from configs import default
  from inception.train import optim
  from inception.train import param_rules
  from inception.train import sharding
  from inception.train import steps
  from inception import transfer
  c = default.get_config()
  c.model.cut, c.model.weights, c.model.head, c.model.dense_units = 'stem', 'random', 'gap', 16
  c.model.dropout = 0.0  # dropout masks depend on the sharding of the random bits
  c.optimizer.param_rules = (('^backbone/stem/conv2d_4a', 0.5), ('^backbone/', 0.0),
                             ('.*', 1.0))
  model = transfer.from_config(c, 2)
  variables = transfer.init_variables(model, 75, 0)
  tx = optim.make(c.optimizer, variables['params'])
  mask = param_rules.trainable_mask(variables['params'], c.optimizer.param_rules)
  mesh = sharding.make_mesh()
  assert mesh.devices.size == int(sys.argv[1]), mesh
  repl, dsh = sharding.replicated(mesh), sharding.data_sharded(mesh)
  state = sharding.replicate(steps.create_state(variables, tx), mesh)
  step = steps.make_train_step(model, tx, mask, train_blocks=('stem',), state_sharding=repl,
                               batch_sharding=dsh)
  rng = np.random.default_rng(0)
  key = jax.device_put(jax.random.key(0), repl)
  losses = []
  for i in range(3):
    b = {'image': rng.uniform(0, 1, (8, 75, 75, 3)).astype(np.float32),
         'label': (np.arange(8) % 2).astype(np.int32)}
    state, m = step(state, sharding.shard_batch(b, mesh), key)
    losses.append(float(m['loss']))
  ev = steps.make_eval_step(model, 2, replicated=repl, batch_sharding=dsh)
  b['mask'] = np.arange(8) < 6
  sums = jax.device_get(ev({'params': state.params, 'batch_stats': state.batch_stats},
                           sharding.shard_batch(b, mesh)))
  flat = param_rules.flat_paths(jax.device_get(state.params))
  stats = param_rules.flat_paths(jax.device_get(state.batch_stats))
  print(json.dumps({'losses': losses, 'eval_loss': float(sums['loss']),
                    'count': float(sums['count']),
                    'head': flat['head/dense/kernel'][:4, :4].ravel().tolist(),
                    'unit': flat['backbone/stem/conv2d_4a_3x3/conv/kernel'].ravel()[:16].tolist(),
                    'mean': stats['backbone/stem/conv2d_4a_3x3/bn/mean'].ravel()[:16].tolist(),
                    'sharded': str(sharding.shard_batch(b, mesh)['image'].sharding.spec)}))
''')


def _run(devices: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, '-c', SCRIPT, str(devices)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_four_devices_match_one():
  one, four = _run(1), _run(4)
  assert four['sharded'] in ("PartitionSpec('data',)", "P('data',)"), four['sharded']
  assert one['count'] == four['count'] == 6.0
  for key in ('losses', 'head', 'unit', 'mean'):
    np.testing.assert_allclose(four[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(four['eval_loss'], one['eval_loss'], rtol=1e-5)
