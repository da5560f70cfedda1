"""The training knobs beyond the seed: learning-rate schedules, decoupled weight decay, gradient
clipping (inception/train/optim.py) and label smoothing (inception/train/steps.py), each
against optax's own transforms, hand-computed values or tf_keras; all off by default."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from inception.train import optim
from inception.train import steps as steps_lib

RULES = (('^backbone/', 0.0), ('^head/slow/', 0.1), ('.*', 1.0))


def _opt(**values) -> ml_collections.ConfigDict:
  opt = default.get_config().optimizer
  opt.update({'param_rules': RULES, **values})
  return opt


def _params() -> dict:
  rng = np.random.default_rng(0)
  leaf = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  return {'backbone': {'conv': {'kernel': leaf(3, 3)}, 'bn': {'scale': leaf(3)}},
          'head': {'dense': {'kernel': leaf(4, 2), 'bias': leaf(2)},
                   'slow': {'kernel': leaf(2, 2)}, 'bn': {'scale': leaf(2)}}}


def _run(tx, params, steps: int = 4, seed: int = 1) -> list[dict]:
  """Applies `tx` to `steps` random gradient trees; returns the params after each step."""
  state, out = tx.init(params), []
  for step in range(steps):
    # Each leaf's gradients depend on the last two keys of its path and the step only (the
    # same in a subtree).
    grads = jax.tree_util.tree_map_with_path(
        lambda path, p: np.random.default_rng(
            [seed, step, *jax.tree_util.keystr(path[-2:]).encode()]).standard_normal(
                p.shape).astype(np.float32), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out


def test_defaults_are_the_constant_lr_optimizer_state_and_all():
  opt, params = _opt(), _params()
  assert optim.learning_rate(opt) == opt.lr  # A float: no schedule count in the state.
  ref = optax.multi_transform(
      {'frozen': optax.set_to_zero(), 'lr_x0.1': optim.base(opt, opt.lr * 0.1),
       'lr_x1.0': optim.base(opt, opt.lr)},
      jax.tree.map(lambda m: {0.0: 'frozen', 0.1: 'lr_x0.1', 1.0: 'lr_x1.0'}[m],
                   {'backbone': {'conv': {'kernel': 0.0}, 'bn': {'scale': 0.0}},
                    'head': {'dense': {'kernel': 1.0, 'bias': 1.0}, 'slow': {'kernel': 0.1},
                             'bn': {'scale': 1.0}}}))
  tx = optim.make(opt, params, steps_per_epoch=10, total_steps=100)
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(ref.init(params))
  for a, b in zip(_run(tx, params), _run(ref, params)):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_cosine_schedule_with_warmup_values():
  opt = _opt(schedule='cosine', warmup_epochs=1.0, end_lr_factor=0.1, lr=1e-2)
  lr = optim.learning_rate(opt, steps_per_epoch=10, total_steps=110)
  at = lambda s: float(lr(jnp.asarray(s)))
  assert at(0) == 0.0
  np.testing.assert_allclose(at(5), 0.5e-2, rtol=1e-6)  # Linear warmup.
  np.testing.assert_allclose(at(10), 1e-2, rtol=1e-6)   # Peak at the warmup's end.
  # Cosine over the remaining 100 steps: lr * (alpha + (1 - alpha) * (1 + cos(pi t/T)) / 2).
  for t in (25, 50, 99):
    want = 1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 100)))
    np.testing.assert_allclose(at(10 + t), want, rtol=1e-5)
  np.testing.assert_allclose(at(110), 1e-3, rtol=1e-5)


def test_step_schedule_values_and_rule_multipliers():
  opt = _opt(schedule='step', decay_epochs=(2, 3), decay_factor=0.5, lr=1e-2)
  lr = optim.learning_rate(opt, steps_per_epoch=4, total_steps=16)
  values = [float(lr(jnp.asarray(s))) for s in (0, 7, 8, 11, 12, 15)]
  np.testing.assert_allclose(values, [1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3, 2.5e-3], rtol=1e-6)
  # SGD: the update of a rule-0.1 leaf is 0.1 * schedule * g at every step.
  opt = _opt(name='sgd', schedule='step', decay_epochs=(1,), decay_factor=0.5, lr=1.0)
  params = _params()
  tx = optim.make(opt, params, steps_per_epoch=1, total_steps=3)
  state = tx.init(params)
  ones = jax.tree.map(np.ones_like, params)
  for step, want in enumerate((1.0, 0.5, 0.5)):
    updates, state = tx.update(ones, state, params)
    np.testing.assert_allclose(updates['head']['slow']['kernel'], -0.1 * want, rtol=1e-6)
    np.testing.assert_allclose(updates['head']['dense']['kernel'], -want, rtol=1e-6)
    np.testing.assert_array_equal(updates['backbone']['conv']['kernel'], 0.0)


def test_adam_weight_decay_is_optax_adamw_and_spares_frozen_bias_and_batchnorm():
  opt = _opt(name='adam', lr=1e-2, epsilon=1e-7, weight_decay=0.1,
             param_rules=(('^backbone/', 0.0), ('.*', 1.0)))
  params = _params()
  ours = _run(optim.make(opt, params), params)
  head = params['head']
  mask = {'dense': {'kernel': True, 'bias': False}, 'slow': {'kernel': True},
          'bn': {'scale': False}}
  ref = _run(optax.adamw(1e-2, b1=0.9, b2=0.999, eps=1e-7, weight_decay=0.1, mask=mask), head)
  for a, b in zip(ours, ref):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-7),
                 a['head'], b)
    jax.tree.map(np.testing.assert_array_equal, a['backbone'], params['backbone'])


def test_rmsprop_weight_decay_is_decoupled_and_follows_the_schedule():
  opt = _opt(lr=1e-2, weight_decay=0.5, schedule='cosine', param_rules=(('.*', 1.0),))
  params = {'w': np.full((3,), 2.0, np.float32), 'b': {'bias': np.full((3,), 2.0, np.float32)}}
  tx = optim.make(opt, params, steps_per_epoch=2, total_steps=4)
  plain = optim.base(opt, optim.learning_rate(opt, 2, 4))
  lr = optim.learning_rate(opt, 2, 4)
  state, plain_state = tx.init(params), plain.init(params)
  g = {'w': np.full((3,), 0.3, np.float32), 'b': {'bias': np.full((3,), 0.3, np.float32)}}
  for step in range(4):
    u, state = tx.update(g, state, params)
    want, plain_state = plain.update(g, plain_state, params)
    decay = -float(lr(jnp.asarray(step))) * 0.5 * params['w']
    np.testing.assert_allclose(u['w'], want['w'] + decay, rtol=1e-6)
    np.testing.assert_array_equal(u['b']['bias'], want['b']['bias'])  # Excluded: '/bias$'.


def test_clipping_is_by_the_global_norm_of_the_trainable_gradients():
  opt = _opt(name='sgd', lr=1.0, clip_global_norm=1.0, param_rules=(('^backbone/', 0.0),
                                                                   ('.*', 1.0)))
  params = _params()
  tx = optim.make(opt, params)
  grads = jax.tree.map(lambda p: np.full_like(p, 2.0), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  n_trainable = sum(np.size(x) for x in jax.tree.leaves(params['head']))
  # Frozen gradients count as zeros: the norm is 2 * sqrt(trainable count).
  np.testing.assert_allclose(updates['head']['dense']['kernel'],
                             -2.0 / (2.0 * math.sqrt(n_trainable)), rtol=1e-6)
  np.testing.assert_array_equal(updates['backbone']['conv']['kernel'], 0.0)


def test_label_smoothing_binary_and_softmax_hand_computed():
  z, e = 2.0, 0.1
  loss, correct = steps_lib.loss_and_correct(jnp.asarray([[z], [z]]), jnp.asarray([1, 0]), e)
  p = 1 / (1 + math.exp(-z))
  for y, got in zip((1, 0), np.asarray(loss)):
    t = y * (1 - e) + e / 2
    np.testing.assert_allclose(got, -(t * math.log(p) + (1 - t) * math.log(1 - p)), rtol=1e-6)
  np.testing.assert_array_equal(correct, [1.0, 0.0])  # Accuracy ignores the smoothing.
  logits = jnp.asarray([[1.0, 2.0, 0.5]])
  loss, _ = steps_lib.loss_and_correct(logits, jnp.asarray([1]), 0.3)
  logp = np.log(np.exp(logits[0]) / np.exp(logits[0]).sum())
  target = np.array([0.1, 0.8, 0.1])  # 0.3 / 3 everywhere, 0.7 on the label.
  np.testing.assert_allclose(loss[0], -(target * logp).sum(), rtol=1e-6)


def test_binary_label_smoothing_matches_tf_keras():
  tf_keras = pytest.importorskip('tf_keras')
  logits = np.array([[-3.0], [0.2], [1.5], [4.0]], np.float32)
  labels = np.array([0, 1, 0, 1])
  keras = tf_keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2)
  want = float(keras(labels[:, None].astype(np.float32), logits))
  got, _ = steps_lib.loss_and_correct(jnp.asarray(logits), jnp.asarray(labels), 0.2)
  np.testing.assert_allclose(float(got.mean()), want, rtol=1e-6)


@pytest.mark.parametrize('key,value,message', [
    ('schedule', 'linear', 'optimizer.schedule'),
    ('warmup_epochs', -1.0, 'optimizer.warmup_epochs'),
    ('end_lr_factor', 2.0, 'optimizer.end_lr_factor'),
    ('decay_epochs', (9, 6), 'must be increasing'),
    ('weight_decay', -0.1, 'optimizer.weight_decay'),
    ('weight_decay_exclude', ('([',), 'weight_decay_exclude'),
    ('clip_global_norm', -1.0, 'optimizer.clip_global_norm'),
])
def test_bad_knobs_name_the_key(key, value, message):
  opt = _opt()
  setattr(opt, key, value)
  with pytest.raises(ValueError, match=message.replace('(', r'\(')):
    optim.validate_config(opt)


def test_step_schedule_needs_decay_epochs():
  with pytest.raises(ValueError, match='needs config.optimizer.decay_epochs'):
    optim.validate_config(_opt(schedule='step'))


KNOBS = ['--config.train.ema_decay=0.9', '--config.optimizer.schedule=cosine',
         '--config.optimizer.warmup_epochs=1.0', '--config.optimizer.end_lr_factor=0.1', '--config.optimizer.weight_decay=0.05',
         '--config.optimizer.clip_global_norm=0.5', '--config.train.label_smoothing=0.1']


@pytest.mark.slow
def test_every_knob_on_resumes_bit_identical(tmp_path):
  """SIGTERM at step 5 of 9 with every knob on; the rerun continues the schedule (its count is
  in the optimizer state) and ends bit-identical to an uninterrupted run."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests import test_faults_kill as kill  # pylint: disable=g-import-not-at-top

  def run(script, workdir, **env):
    return subprocess.run([sys.executable, script, f'--config={kill.CONFIG}',
                           f'--workdir={workdir}', '--noprogress', *KNOBS], cwd=kill.ROOT,
                          env=kill._env(tmp_path / 'cache', **env), capture_output=True,
                          text=True, timeout=300)
  ref = run('train.py', tmp_path / 'ref')
  assert ref.returncode == 0, ref.stderr[-3000:]
  wd = tmp_path / 'preempted'
  r = run('tests/fault_runner.py', wd, INCEPTION_FLAX_FAULT='sigterm_at_step:5',
          INCEPTION_FLAX_FAULT_LOG=str(tmp_path / 'fault.log'))
  assert r.returncode == 143, r.stderr[-3000:]
  again = run('train.py', wd)
  assert again.returncode == 0 and f'Resumed from {wd / "checkpoints"}/5 ' in again.stdout
  want, want_meta = kill._model_bits(tmp_path / 'ref')
  got, got_meta = kill._model_bits(wd)
  assert got_meta['step'] == want_meta['step'] == 9
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # The knobs reached the step: without them the same run ends elsewhere.
  plain = subprocess.run([sys.executable, 'train.py', f'--config={kill.CONFIG}',
                          f'--workdir={tmp_path / "defaults"}', '--noprogress'], cwd=kill.ROOT,
                         env=kill._env(tmp_path / 'cache'), capture_output=True, text=True,
                         timeout=300)
  assert plain.returncode == 0, plain.stderr[-3000:]
  defaults, _ = kill._model_bits(tmp_path / 'defaults')
  head = [k for k in want if 'head' in k]
  assert head and all(not np.array_equal(defaults[k], want[k]) for k in head)
