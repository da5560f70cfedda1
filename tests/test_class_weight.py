"""train.class_weight: Keras' class_weight (each example's loss times its label's weight, then
the batch mean), 'balanced' as sklearn computes it, explicit 'class:weight' mappings; recorded
in summary.json, and a resume with another value is refused."""

import json
import math
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import smoke
from data import pipeline
from inception import transfer
from inception.train import optim
from inception.train import param_rules
from inception.train import run_record
from inception.train import steps
from inception.train import trainer


def test_balanced_weights_equal_sklearns_on_uneven_counts():
  utils = pytest.importorskip('sklearn.utils')
  labels = np.repeat(np.arange(4), [3, 17, 1, 9]).astype(np.int32)
  np.random.default_rng(0).shuffle(labels)
  got = steps.class_weights('balanced', ('a', 'b', 'c', 'd'), labels)
  want = utils.compute_class_weight('balanced', classes=np.arange(4), y=labels)
  assert got.dtype == np.float32 and got.shape == (4,)
  np.testing.assert_array_equal(got, want.astype(np.float32))
  np.testing.assert_allclose(got, 30 / (4 * np.array([3, 17, 1, 9])), rtol=1e-7)


def test_balanced_refuses_a_class_without_training_examples():
  with pytest.raises(ValueError, match=r"config\.train\.class_weight='balanced': classes "
                                       r"\['horse'\] have no training example"):
    steps.class_weights('balanced', ('dog', 'horse'), np.zeros(5, np.int32))


def test_explicit_mapping_in_label_order_and_none():
  got = steps.class_weights(' horse : 10, dog:1.5', ('dog', 'horse'), np.zeros(3, np.int32))
  np.testing.assert_array_equal(got, np.asarray([1.5, 10.0], np.float32))
  assert steps.class_weights('none', ('dog', 'horse'), np.zeros(3, np.int32)) is None


@pytest.mark.parametrize('value,message', [
    ('dog:1.0,cat:2.0', r"unknown classes \['cat'\]; no weight for classes \['horse'\]; name "
                        r'every class of the data exactly once: dog, horse'),
    ('dog:1.0', r"no weight for classes \['horse'\]; name every class .*: dog, horse"),
    ('dog:1,horse:2,wolf:3', r"unknown classes \['wolf'\]; name every class .*: dog, horse"),
])
def test_explicit_mapping_names_the_bad_class_and_the_valid_ones(value, message):
  with pytest.raises(ValueError, match=r'config\.train\.class_weight=.*' + message):
    steps.class_weights(value, ('dog', 'horse'), np.zeros(3, np.int32))


@pytest.mark.parametrize('value,message', [
    ('dog:abc,horse:1', r"the weight of class 'dog', 'abc', must be a finite number > 0"),
    ('dog:0,horse:1', r"the weight of class 'dog', '0', must be a finite number > 0"),
    ('dog:-1,horse:1', r"'dog', '-1', must be a finite number > 0"),
    ('dog:inf,horse:1', r"'dog', 'inf', must be a finite number > 0"),
    ('dog:nan,horse:1', r"'dog', 'nan', must be a finite number > 0"),
    ('dog:1,dog:2', r"names class 'dog' more than once"),
    ('dog=1,horse:2', r"'dog=1' is not class:weight"),
    ('Balanced', r"'Balanced' is not class:weight; valid: none, balanced or "),
    (':1', r"':1' is not class:weight"),
])
def test_the_syntax_is_checked_with_the_config(value, message):
  c = default.get_config()
  c.train.class_weight = value
  with pytest.raises(ValueError, match=r'config\.train\.class_weight=.*' + message):
    steps.validate_config(c)


def test_valid_values_pass_and_a_non_string_is_refused():
  c = default.get_config()
  for value in ('none', 'balanced', 'dog:1.0,horse:10.0', 'anything:1'):
    c.train.class_weight = value
    steps.validate_config(c)  # The names are checked in build, against the data's.
  with pytest.raises(ValueError, match=r"config\.train\.class_weight=1\.0 must be a string"):
    steps.parse_class_weight(1.0)


def _bce(z, t):
  p = 1 / (1 + math.exp(-z))
  return -(t * math.log(p) + (1 - t) * math.log(1 - p))


@pytest.mark.parametrize('e', [0.0, 0.2])
def test_weighted_binary_loss_is_the_hand_computation(e):
  z = np.asarray([2.0, -1.0, 0.5, 3.0], np.float32)
  labels = np.asarray([1, 0, 0, 1])
  w = np.asarray([0.25, 4.0], np.float32)
  loss, correct = steps.loss_and_correct(jnp.asarray(z[:, None]), jnp.asarray(labels), e, w)
  want = [w[y] * _bce(float(zi), y * (1 - e) + e / 2) for zi, y in zip(z, labels)]
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  # The batch loss: sum / B, not divided by the weights' sum.
  np.testing.assert_allclose(float(loss.mean()), sum(want) / 4, rtol=1e-6)
  np.testing.assert_array_equal(correct, [1.0, 1.0, 0.0, 1.0])  # Accuracy is unweighted.


@pytest.mark.parametrize('e', [0.0, 0.3])
def test_weighted_softmax_loss_is_the_hand_computation(e):
  logits = np.asarray([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 0.1, 0.2]], np.float32)
  labels = np.asarray([1, 2, 0])
  w = np.asarray([3.0, 0.5, 2.0], np.float32)
  loss, _ = steps.loss_and_correct(jnp.asarray(logits), jnp.asarray(labels), e, w)
  want = []
  for row, y in zip(logits.astype(np.float64), labels):
    logp = row - np.log(np.exp(row).sum())
    target = np.full(3, e / 3)
    target[y] += 1 - e  # The weight is the true label's, whatever the smoothing.
    want.append(w[y] * -(target * logp).sum())
  np.testing.assert_allclose(loss, want, rtol=1e-6)


@pytest.mark.parametrize('logits', [np.asarray([[0.3], [-2.0], [1.0]], np.float32),
                                    np.asarray([[0.3, 1.0], [-2.0, 0.5], [1.0, 1.0]],
                                               np.float32)])
@pytest.mark.parametrize('e', [0.0, 0.1])
def test_none_and_unit_weights_are_bit_identical_to_no_argument(logits, e):
  labels = jnp.asarray([0, 1, 1])
  plain = steps.loss_and_correct(jnp.asarray(logits), labels, e)
  for w in (None, np.ones(2, np.float32)):
    got = steps.loss_and_correct(jnp.asarray(logits), labels, e, w)
    for a, b in zip(got, plain):
      np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


def test_the_train_step_minimises_the_weighted_mean():
  c = default.get_config()
  c.model.cut, c.model.weights, c.model.head, c.model.dense_units = 'stem', 'random', 'gap', 8
  c.model.dropout = 0.0
  model = transfer.from_config(c, 2)
  variables = transfer.init_variables(model, 75, 0)
  tx = optim.make(c.optimizer, variables['params'])
  mask = param_rules.trainable_mask(variables['params'], c.optimizer.param_rules)
  state = steps.create_state(variables, tx)
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(0, 1, (4, 75, 75, 3)).astype(np.float32),
           'label': np.asarray([0, 1, 1, 1], np.int32)}
  w = np.asarray([3.0, 0.5], np.float32)
  _, metrics = steps.make_train_step(model, tx, mask, class_weights=w, donate=False)(
      state, batch, jax.random.key(0))
  logits = model.apply(variables, batch['image'], train=True)
  per_example, _ = steps.loss_and_correct(logits, jnp.asarray(batch['label']))
  np.testing.assert_allclose(float(metrics['loss']),
                             float(np.mean(w[batch['label']] * np.asarray(per_example))),
                             rtol=1e-5)


def _config(class_weight):
  c = smoke.get_config('epochs=1,cut=stem')
  c.train.class_weight = class_weight
  return c


@pytest.fixture(scope='module')
def balanced_run(tmp_path_factory, module_cache):
  del module_cache
  wd = tmp_path_factory.mktemp('balanced') / 'run'
  messages = []
  summary = trainer.train(_config('balanced'), wd, progress_bars=False, log=messages.append)
  return wd, summary, messages


@pytest.mark.slow
def test_a_balanced_run_trains_and_records_its_weights(balanced_run):
  wd, summary, messages = balanced_run
  record = run_record.load(wd)
  assert record.config.train.class_weight == 'balanced'
  info = trainer.prepare_data(record.config, log=lambda _: None)
  want = steps.class_weights('balanced', record.class_names,
                             pipeline.split_files(info, 'train')[1])
  recorded = json.loads((wd / 'summary.json').read_text())['class_weights']
  assert list(recorded) == list(record.class_names)
  np.testing.assert_array_equal(np.asarray(list(recorded.values()), np.float32), want)
  assert summary['class_weights'] == recorded
  assert summary['steps'] == summary['total_steps'] > 0
  assert np.isfinite(summary['final_train']['loss'])
  line, = [m for m in messages if m.startswith("Class weights (train.class_weight='balanced'):")]
  assert all(name in line for name in record.class_names)


@pytest.mark.slow
def test_a_resume_with_another_class_weight_is_refused(balanced_run, tmp_path):
  wd = tmp_path / 'run'
  shutil.copytree(balanced_run[0], wd)
  names = run_record.load(wd).class_names
  for other in ('none', ','.join(f'{n}:2.0' for n in names)):
    with pytest.raises(run_record.ConfigMismatchError,
                       match=r"in keys that change how it trains: train\.class_weight: run "
                             r"'balanced', --config " + re.escape(repr(other)) + r'\. '):
      trainer.train(_config(other), wd, progress_bars=False, log=lambda _: None)
  assert 'train.class_weight' not in run_record.RESUME_CHANGEABLE
