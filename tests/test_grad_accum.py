"""Gradient accumulation (train.grad_accum_steps): k micro-batches, one update per step."""

import json

import jax
import numpy as np
import pytest

from configs import default
from configs import smoke
from inception import transfer
from inception.train import optim
from inception.train import param_rules
from inception.train import run_record
from inception.train import steps
from inception.train import trainer
from inception.train import validate

SIZE = 75


def _setup(rules=(('^backbone/', 0.0), ('.*', 1.0)), dropout=0.0):
  c = default.get_config()  # RMSprop
  c.model.cut, c.model.weights, c.model.head, c.model.dense_units = 'stem', 'random', 'gap', 16
  c.model.dropout = dropout
  c.optimizer.param_rules = rules
  model = transfer.from_config(c, 2)
  variables = transfer.init_variables(model, SIZE, 0)
  tx = optim.make(c.optimizer, variables['params'])
  mask = param_rules.trainable_mask(variables['params'], rules)
  return model, tx, mask, variables


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32),
          'label': rng.integers(0, 2, n).astype(np.int32)}


def _run(step, variables, tx, batches):
  state = steps.create_state(variables, tx)
  for b in batches:
    state, m = step(state, b, jax.random.key(0))
  return jax.device_get(state), jax.device_get(m)


def test_accumulated_micro_batches_equal_one_large_batch():
  model, tx, mask, variables = _setup()
  batches = [_batch(8, seed) for seed in (0, 1)]
  one, m1 = _run(steps.make_train_step(model, tx, mask, donate=False), variables, tx, batches)
  for k in (2, 4):
    acc, mk = _run(steps.make_train_step(model, tx, mask, grad_accum_steps=k, donate=False),
                   variables, tx, batches)
    assert int(acc.step) == 2  # One update per call.
    for (path, a), b in zip(param_rules.flat_paths(acc.params).items(),
                            param_rules.flat_paths(one.params).values()):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=f'k={k} {path}')
    np.testing.assert_allclose(mk['loss'], m1['loss'], rtol=1e-5)
    np.testing.assert_allclose(mk['accuracy'], m1['accuracy'], rtol=1e-6)
    assert int(mk['nonfinite']) == 0
  trained = param_rules.flat_paths(one.params)['head/dense/kernel']
  assert not np.allclose(trained, param_rules.flat_paths(variables['params'])['head/dense/kernel'])


def _bits(tree):
  return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(tree)]


def test_one_step_is_bit_identical_to_no_accumulation():
  # Dropout on: k=1 keeps the key fold_in(base_key, step).
  model, tx, mask, variables = _setup(dropout=0.5)
  batches = [_batch(4, seed) for seed in (0, 1)]
  plain, m0 = _run(steps.make_train_step(model, tx, mask, donate=False), variables, tx, batches)
  one, m1 = _run(steps.make_train_step(model, tx, mask, grad_accum_steps=1, donate=False),
                 variables, tx, batches)
  for a, b in zip(_bits((plain, m0)), _bits((one, m1))):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='grad_accum_steps=0 must be an integer >= 1'):
    steps.make_train_step(model, tx, mask, grad_accum_steps=0)


def test_batchnorm_training_micro_batches_update_moving_averages_in_sequence():
  rules = (('^backbone/stem/conv2d_4a', 0.5), ('^backbone/', 0.0), ('.*', 1.0))
  model, tx, mask, variables = _setup(rules=rules, dropout=0.2)
  batch = _batch(8)
  step = steps.make_train_step(model, tx, mask, train_blocks=('stem',), grad_accum_steps=2,
                               donate=False)
  state, m = _run(step, variables, tx, [batch])
  assert np.isfinite(m['loss']) and int(m['nonfinite']) == 0
  # Expected: micro-batch 0 (rows 0, 2, ...) normalises alone and updates the averages, then
  # micro-batch 1 (rows 1, 3, ...) from those.
  stats = variables['batch_stats']
  for i in range(2):
    _, mutated = model.apply({'params': variables['params'], 'batch_stats': stats},
                             batch['image'][i::2], train=True, train_blocks=('stem',),
                             rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
    stats = mutated['batch_stats']
  for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # ... which is not what one batch of 8 gives (documented).
  big, _ = _run(steps.make_train_step(model, tx, mask, train_blocks=('stem',), donate=False),
                variables, tx, [batch])
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.batch_stats),
                                                    jax.tree.leaves(big.batch_stats)))


def test_validation_names_the_key():
  c = smoke.get_config()
  for bad in (0, -1):  # (ConfigDict itself refuses a float or a bool for the int key.)
    c.train.grad_accum_steps = bad
    with pytest.raises(ValueError, match=r'config\.train\.grad_accum_steps=.* must be'):
      validate.validate_config(c, device_count=1)
  c.train.grad_accum_steps = 3  # batch_size 8
  with pytest.raises(ValueError, match=r'config\.train\.batch_size=8 is not divisible by '
                     r'config\.train\.grad_accum_steps=3 .*use a batch_size that is a multiple '
                     r'of 3'):
    validate.validate_config(c, device_count=1)
  c.train.grad_accum_steps = 4  # micro-batch 2
  validate.validate_config(c, device_count=2)
  with pytest.raises(ValueError, match=r'config\.train\.batch_size=8 / '
                     r'config\.train\.grad_accum_steps=4 = 2 \(the micro-batch\) is not '
                     r'divisible by the device count 4; use a batch_size that is a multiple of '
                     r'16'):
    validate.validate_config(c, device_count=4)


@pytest.mark.usefixtures('module_cache')
@pytest.mark.parametrize('cache', [False, True], ids=['images', 'feature_cache'])
def test_a_run_counts_updates(tmp_path, cache):
  c = smoke.get_config('epochs=1,cut=stem')
  c.train.grad_accum_steps = 2
  c.data.augment.enabled = not cache  # The feature cache (a head-only step) needs it off.
  messages = []
  summary = trainer.train(c, tmp_path / 'run', progress_bars=False, log=messages.append)
  used = 'Feature cache: on' if cache else 'Feature cache: not used'
  assert any(m.startswith(used) for m in messages), messages
  steps_per_epoch = 24 // 8  # 16 per class, 2 classes, 1/4 validation; batch 8 (2 x 4).
  assert summary['steps'] == summary['total_steps'] == steps_per_epoch
  lines = (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  # Steps are updates: 3, not the 6 micro-batches.
  assert {r['step'] for r in records} <= set(range(1, steps_per_epoch + 1))
  assert {r['split'] for r in records if r['step'] == steps_per_epoch} >= {'train', 'validation'}
  assert all(np.isfinite(r['loss']) for r in records)
  if cache:
    return
  # It changes how the run trains: a resume with another value is refused.
  assert 'train.grad_accum_steps' not in run_record.RESUME_CHANGEABLE
  c.train.grad_accum_steps, c.train.epochs = 1, 2
  with pytest.raises(run_record.ConfigMismatchError,
                     match=r'train\.grad_accum_steps: run 2, --config 1'):
    trainer.train(c, tmp_path / 'run', progress_bars=False, log=lambda _: None)


@pytest.mark.slow
def test_two_devices_match_one(monkeypatch):
  # test_sharding's 3 steps (BatchNorm training, batch 8) with k=2: a micro-batch of 4 rows
  # over 2 devices gives what it gives on one.
  import test_sharding  # pylint: disable=import-outside-toplevel
  old = "train_blocks=('stem',),"
  assert old in test_sharding.SCRIPT
  monkeypatch.setattr(test_sharding, 'SCRIPT', test_sharding.SCRIPT.replace(
      old, old + ' grad_accum_steps=2,'))
  one, two = test_sharding._run(1), test_sharding._run(2)  # pylint: disable=protected-access
  for key in ('losses', 'head', 'unit', 'mean'):
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
