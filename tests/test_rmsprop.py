"""Our optimizers vs tf_keras' on identical gradient sequences."""

import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from inception.train import optim


def _opt(**values) -> ml_collections.ConfigDict:
  """configs/default.py's optimizer section with `values`."""
  opt = default.get_config().optimizer
  opt.update(values)
  return opt


def _keras_updates(opt, grads_seq, w0):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  var = tf.Variable(w0)
  out = []
  for g in grads_seq:
    before = var.numpy().copy()
    opt.apply_gradients([(tf.constant(g), var)])
    out.append(var.numpy() - before)
  return out


def _optax_updates(tx, grads_seq, w0):
  state = tx.init(w0)
  out = []
  for g in grads_seq:
    u, state = tx.update(g, state, w0)
    out.append(np.asarray(u))
  return out


def _grads(steps=6, shape=(5, 3), seed=0):
  rng = np.random.default_rng(seed)
  # Mixed magnitudes, including tiny gradients where eps placement matters most.
  scale = np.logspace(-6, 1, np.prod(shape)).reshape(shape).astype(np.float32)
  return [(rng.standard_normal(shape).astype(np.float32) * scale) for _ in range(steps)]


@pytest.mark.parametrize('legacy,momentum,eps_in_sqrt', [
    (True, 0.0, False),   # tf.keras OptimizerV2 (TF <= 2.10): eps outside the sqrt
    (True, 0.9, True),    # ... whose momentum path calls ApplyRMSProp: eps inside
    (False, 0.0, True),   # tf_keras 2.x / TF >= 2.11 optimizer: eps inside
    (False, 0.9, True),
])
def test_rmsprop_matches_tf_keras(legacy, momentum, eps_in_sqrt):
  tf_keras = pytest.importorskip('tf_keras')
  grads = _grads()
  w0 = np.zeros((5, 3), np.float32)
  cls = tf_keras.optimizers.legacy.RMSprop if legacy else tf_keras.optimizers.RMSprop
  ref = _keras_updates(cls(learning_rate=1e-3, rho=0.9, epsilon=1e-7, momentum=momentum),
                       grads, w0)
  ours = _optax_updates(optim.keras_rmsprop(1e-3, 0.9, 1e-7, momentum, eps_in_sqrt), grads,
                        w0)
  for step, (a, b) in enumerate(zip(ours, ref)):
    # Keras' updates are read back as float32 differences of the variable (|w| < 0.05), so
    # they carry up to ~2 ulp(0.05) = 1e-8 of rounding on top of the relative tolerance.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8, err_msg=f'step {step}')


def test_eps_placement_matters():
  # Guards the reason the knob exists: the two conventions give different first updates.
  grads = _grads(steps=1)
  w0 = np.zeros((5, 3), np.float32)
  outside = _optax_updates(optim.keras_rmsprop(1e-3, eps_in_sqrt=False), grads, w0)[0]
  inside = _optax_updates(optim.keras_rmsprop(1e-3, eps_in_sqrt=True), grads, w0)[0]
  default = _optax_updates(optax.rmsprop(1e-3, decay=0.9), grads, w0)[0]
  assert not np.allclose(outside, inside, rtol=1e-3)
  assert not np.allclose(outside, default, rtol=1e-3)


def test_masked_optimizer_has_no_state_for_frozen_and_scales_lr():
  opt = _opt(name='rmsprop', lr=1e-3, rho=0.9, epsilon=1e-7, momentum=0.0, eps_in_sqrt=False,
             param_rules=(('^backbone/b/', 0.1), ('^backbone/', 0.0), ('.*', 1.0)))
  params = {'backbone': {'a': {'kernel': np.ones((3, 4), np.float32)},
                         'b': {'kernel': np.ones((2,), np.float32)}},
            'head': {'dense': {'kernel': np.ones((4, 1), np.float32)}}}
  tx = optim.make(opt, params)
  state = tx.init(params)
  import jax  # pylint: disable=g-import-not-at-top
  sizes = sorted(int(np.size(x)) for x in jax.tree.leaves(state))
  assert sizes == [2, 4]  # one RMS accumulator per trainable leaf; nothing for backbone/a
  grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_array_equal(updates['backbone']['a']['kernel'], 0.0)
  head = updates['head']['dense']['kernel']
  np.testing.assert_allclose(updates['backbone']['b']['kernel'], 0.1 * head[:2, 0], rtol=1e-6)
  # Keras' (OptimizerV2) first RMSprop step: lr * g / (sqrt(0.1 g^2) + eps).
  np.testing.assert_allclose(head, -1e-3 * 0.5 / (np.sqrt(0.1 * 0.25) + 1e-7), rtol=1e-6)


@pytest.mark.parametrize('rules,message', [
    ((('^backbone/', 0.0),), "matches no rule"),
    ((('([', 1.0),), 'bad regex'),
    ((('.*', -1.0),), 'must be a number >= 0'),
    ((('.*',),), 'must be a (regex, lr multiplier) pair'),
])
def test_bad_param_rules(rules, message):
  opt = _opt(name='rmsprop', lr=1e-3, rho=0.9, epsilon=1e-7, momentum=0.0)
  opt.param_rules = rules
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    optim.make(opt, {'head': {'kernel': np.ones(2)}})
