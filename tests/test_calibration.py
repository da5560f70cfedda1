"""Temperature scaling (inception/train/calibration.py): the fit recovers a known temperature,
its NLL is sklearn's log loss, views average as the eval step averages them, a separable
validation split is refused, and calibration.json keeps one entry per (step, tta)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from inception.train import calibration
from inception.train import steps


def _sample(t0: float, n: int = 20000, k: int = 1, seed: int = 0):
  """Logits and labels drawn from softmax(logits / t0) (k = 1: sigmoid of one logit)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(0.0, 3.0, size=(n, k))
  full = np.concatenate([np.zeros_like(z), z], 1) if k == 1 else z
  p = np.exp(full / t0 - np.logaddexp.reduce(full / t0, axis=1, keepdims=True))
  labels = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)
  return z.astype(np.float32), labels


@pytest.mark.parametrize('k', [1, 4])
def test_the_fit_recovers_the_temperature_the_labels_were_drawn_with(k):
  z, labels = _sample(2.0, k=k)
  t = calibration.fit_temperature([z], labels)
  assert t == pytest.approx(2.0, rel=0.05)
  nll = calibration.nll([z], labels, t)
  assert nll < calibration.nll([z], labels, 1.0)
  assert nll <= min(calibration.nll([z], labels, t * f) for f in (0.99, 1.01))


def test_nll_is_sklearns_log_loss_and_views_average_as_the_eval_step():
  z, labels = _sample(1.0, n=500, k=3, seed=1)
  probs = np.exp(calibration.log_probabilities([z], 1.7))
  assert calibration.nll([z], labels, 1.7) == pytest.approx(
      sk_metrics.log_loss(labels, probs, labels=[0, 1, 2]), rel=1e-9)
  flipped = z[::-1].copy()
  ours = calibration.log_probabilities([z, flipped], 1.7)
  theirs = steps.mean_log_probabilities([jnp.asarray(z / 1.7), jnp.asarray(flipped / 1.7)])
  np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-5)


def test_a_separable_validation_split_has_no_temperature():
  z = np.array([[-3.0], [2.0], [5.0]], np.float32)
  with pytest.raises(calibration.CalibrationError, match='all 3 validation examples correctly'):
    calibration.fit_temperature([z], np.array([0, 1, 1]))
  # One of two views wrong, with confident logits: the NLL falls to log(2) / 3 as T -> 0 and
  # has no minimum either.
  views, labels = [z, -z[::-1]], np.array([0, 1, 1])
  assert calibration.nll(views, labels, 1e-3) == pytest.approx(np.log(2) / 3)
  with pytest.raises(calibration.CalibrationError, match='no minimum inside'):
    calibration.fit_temperature(views, labels)
  # A plain error (one view): a minimum exists.
  wrong = np.array([[-3.0], [-0.5], [5.0]], np.float32)
  t = calibration.fit_temperature([wrong], labels)
  assert calibration.T_RANGE[0] * 10 < t < calibration.T_RANGE[1] / 10
  assert calibration.nll([wrong], labels, t) < min(calibration.nll([wrong], labels, t * f)
                                                   for f in (0.9, 1.1))
  with pytest.raises(calibration.CalibrationError, match='at least one'):
    calibration.fit_temperature([np.zeros([0, 1])], np.zeros([0], int))


def test_one_entry_per_step_and_tta(tmp_path):
  assert calibration.load(tmp_path) == [] and calibration.lookup(tmp_path, 5, 'none') is None
  calibration.save(tmp_path, {'step': 5, 'tta': 'none', 'temperature': 1.5})
  calibration.save(tmp_path, {'step': 5, 'tta': 'flip', 'temperature': 1.2})
  calibration.save(tmp_path, {'step': 5, 'tta': 'none', 'temperature': 1.7})  # A refit.
  assert [(e['tta'], e['temperature']) for e in calibration.load(tmp_path)] == [
      ('flip', 1.2), ('none', 1.7)]
  assert calibration.lookup(tmp_path, 5, 'none')['temperature'] == 1.7
  assert calibration.lookup(tmp_path, 6, 'none') is None
  (tmp_path / calibration.FILE).write_text(json.dumps({'format': 99, 'temperatures': []}))
  with pytest.raises(ValueError, match='format 99.*rerun --mode=calibrate'):
    calibration.load(tmp_path)
