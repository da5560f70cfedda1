"""The jitted train step: freezing, BatchNorm modes, gradients only where trained, FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from inception.train import optim
from inception.train import param_rules
from inception.train import steps
from inception import transfer

SIZE = 75


def _config(cut='mixed0', rules=(('^backbone/', 0.0), ('.*', 1.0)), head='gap', units=16):
  c = default.get_config()
  c.model.cut, c.model.weights, c.model.head, c.model.dense_units = cut, 'random', head, units
  c.optimizer.param_rules = rules
  return c


def _setup(c, seed=0):
  model = transfer.from_config(c, 2)
  variables = transfer.init_variables(model, SIZE, seed)
  # Non-trivial running statistics, so that using them vs batch statistics differs.
  rng = np.random.default_rng(1)
  stats = param_rules.flat_paths(variables['batch_stats'])
  variables['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda path, x: (rng.uniform(0.5, 2.0, x.shape) if path[-1].key == 'var' else
                       rng.uniform(-0.1, 0.1, x.shape)).astype(np.float32),
      variables['batch_stats'])
  assert stats
  tx = optim.make(c.optimizer, variables['params'])
  mask = param_rules.trainable_mask(variables['params'], c.optimizer.param_rules)
  return model, tx, mask, steps.create_state(variables, tx)


def _batch(n=4, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32),
          'label': (np.arange(n) % 2).astype(np.int32)}


def _bits(tree):
  return jax.tree.map(lambda x: np.asarray(x).view(np.uint32).copy(), tree)


def _flat(tree):
  return param_rules.flat_paths(jax.device_get(tree))


@pytest.mark.slow
def test_frozen_params_and_stats_are_bit_identical_and_stateless():
  rules = (('^backbone/mixed0/', 0.5), ('^backbone/', 0.0), ('.*', 1.0))
  c = _config(rules=rules)
  model, tx, mask, state = _setup(c)
  before_p, before_s = _flat(_bits(state.params)), _flat(_bits(state.batch_stats))
  step = steps.make_train_step(model, tx, mask, train_blocks=('mixed0',))
  key = jax.random.key(0)
  for i in range(3):
    state, metrics = step(state, _batch(seed=i), key)
  assert int(state.step) == 3 and int(metrics['nonfinite']) == 0
  after_p, after_s = _flat(_bits(state.params)), _flat(_bits(state.batch_stats))
  for name, bits in before_p.items():
    changed = not np.array_equal(bits, after_p[name])
    assert changed == (not name.startswith('backbone/stem/')), name
  for name, bits in before_s.items():
    changed = not np.array_equal(bits, after_s[name])
    # Only the block that runs BatchNorm in training mode updates its running statistics.
    assert changed == name.startswith('backbone/mixed0/'), name
  # Optimizer state: one RMS accumulator per trainable leaf, none for frozen leaves.
  trainable = [k for k, v in _flat(mask).items() if v]
  state_sizes = sorted(int(np.size(x)) for x in jax.tree.leaves(state.opt_state))
  param_sizes = sorted(int(np.size(v)) for k, v in _flat(state.params).items() if k in trainable)
  assert state_sizes == param_sizes


def test_frozen_backbone_batchnorm_uses_running_statistics():
  c = _config(cut='stem')
  model, _, _, state = _setup(c)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  x = _batch()['image']
  c.model.dropout = 0.0
  no_dropout = transfer.from_config(c, 2)
  eval_mode = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  train_mode = jax.jit(lambda v, x: no_dropout.apply(v, x, train=True))(variables, x)
  np.testing.assert_allclose(train_mode, eval_mode, rtol=1e-6)
  # Running stats (frozen) vs batch stats give different features.
  bn_train, _ = jax.jit(lambda v, x: model.apply(v, x, train=False, train_blocks=('stem',),
                                                 mutable=['batch_stats']))(variables, x)
  assert not np.allclose(bn_train, eval_mode, rtol=1e-3)
  assert train_mode.shape == (4, 1)


def _flops(compiled):
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


@pytest.mark.parametrize('rules,lo,hi', [
    ((('^backbone/', 0.0), ('.*', 1.0)), 0.95, 1.3),  # frozen: one forward pass + a tiny head
    pytest.param((('.*', 1.0),), 2.5, 4.0,             # trainable: forward + ~2x backward
                 marks=pytest.mark.slow),
])
def test_train_step_flops_vs_forward(rules, lo, hi):
  c = _config(cut='stem', rules=rules)
  model, tx, mask, state = _setup(c)
  b = _batch(8)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, b['image'])
  step = steps.make_train_step(model, tx, mask, donate=False)
  ratio = _flops(step.lower(state, b, jax.random.key(0)).compile()) / _flops(fwd.compile())
  assert lo <= ratio <= hi, ratio


def test_nonfinite_step_is_skipped_and_reported():
  c = _config(cut='stem')
  model, tx, mask, state = _setup(c)
  step = steps.make_train_step(model, tx, mask, donate=False)
  bad = _batch()
  bad['image'][0, 0, 0, 0] = np.nan
  new, metrics = step(state, bad, jax.random.key(0))
  assert int(metrics['nonfinite']) == 1 and int(new.step) == 1
  for a, b in zip(jax.tree.leaves(_bits(new.params)), jax.tree.leaves(_bits(state.params))):
    np.testing.assert_array_equal(a, b)


def test_dropout_key_depends_on_step_only():
  c = _config(cut='stem')
  c.model.dropout = 0.5
  model, tx, mask, state = _setup(c)
  step = steps.make_train_step(model, tx, mask, donate=False)
  key, b = jax.random.key(3), _batch()
  _, m1 = step(state, b, key)
  _, m2 = step(state, b, key)
  other = state.replace(step=jnp.asarray(7, jnp.int32))
  _, m3 = step(other, b, key)
  assert float(m1['loss']) == float(m2['loss'])
  assert float(m1['loss']) != float(m3['loss'])


def test_losses_match_keras_definitions():
  logits = jnp.asarray([[2.0], [-1.0], [30.0], [-30.0]])
  labels = jnp.asarray([1, 1, 0, 0])
  loss, correct = steps.loss_and_correct(logits, labels)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # the Keras reference
  ref = tf.nn.sigmoid_cross_entropy_with_logits(
      labels=tf.constant([1., 1., 0., 0.]), logits=tf.constant([2.0, -1.0, 30.0, -30.0]))
  np.testing.assert_allclose(loss, ref.numpy(), rtol=1e-6)  # stable at |logit| = 30
  np.testing.assert_array_equal(correct, [1, 0, 0, 1])
  logits3 = jnp.asarray([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
  loss3, correct3 = steps.loss_and_correct(logits3, jnp.asarray([1, 0]))
  ref3 = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=[1, 0], logits=logits3)
  np.testing.assert_allclose(loss3, ref3, rtol=1e-5)
  np.testing.assert_array_equal(correct3, [1, 0])


def test_bfloat16_compute_keeps_float32_params_state_and_loss():
  """model.dtype='bfloat16': convs and denses compute in bf16; params, optimizer state, logits
  and loss stay float32, and the step's result is close to the float32 step's."""
  results = {}
  for dtype in ('float32', 'bfloat16'):
    c = _config(cut='stem', rules=(('^backbone/stem/', 1.0), ('^backbone/', 0.0), ('.*', 1.0)))
    c.model.dtype = dtype
    model, tx, mask, state = _setup(c)
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                         _batch()['image'])
    assert logits.dtype == jnp.float32
    step = steps.make_train_step(model, tx, mask, donate=False)
    hlo = step.lower(state, _batch(), jax.random.key(0)).as_text()
    assert ('bf16' in hlo) == (dtype == 'bfloat16')  # The compute dtype really changes.
    new, metrics = step(state, _batch(), jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.opt_state)
               if jnp.issubdtype(x.dtype, jnp.floating))
    assert metrics['loss'].dtype == jnp.float32 and np.isfinite(metrics['loss'])
    results[dtype] = float(metrics['loss'])
  # bf16 has an 8-bit mantissa: ~1% relative differences, not more.
  assert abs(results['bfloat16'] - results['float32']) <= 0.05 * abs(results['float32']) + 1e-3
