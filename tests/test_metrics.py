"""inception.train.metrics against scikit-learn and hand-worked cases; the reliability PNG."""

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from inception.train import metrics
from inception.train import reporting


def _random_case(k: int, n: int, seed: int):
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.full(k, 0.7), size=n)
  labels = rng.integers(0, k, n)
  return probs, labels


def _sklearn(y, pred, **kw):
  with warnings.catch_warnings():  # Zero-division and "class only predicted" warnings.
    warnings.simplefilter('ignore')
    return (skm.precision_recall_fscore_support(y, pred, zero_division=0.0, **kw),
            skm.f1_score(y, pred, average='macro'), skm.balanced_accuracy_score(y, pred))


def _check_classification(y, pred, k):
  names = [f'c{i}' for i in range(k)]
  got = metrics.classification(skm.confusion_matrix(y, pred, labels=range(k)), names)
  (p, r, f, s), macro_f1, balanced = _sklearn(y, pred, labels=range(k))
  for i, name in enumerate(names):
    c = got['per_class'][name]
    np.testing.assert_allclose([c['precision'], c['recall'], c['f1']], [p[i], r[i], f[i]],
                               rtol=0, atol=1e-12, err_msg=name)
    assert c['support'] == s[i]
  assert got['macro_f1'] == pytest.approx(macro_f1, abs=1e-12)
  assert got['balanced_accuracy'] == pytest.approx(balanced, abs=1e-12)
  assert got['accuracy'] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
  return got


@pytest.mark.parametrize('k', [2, 5])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_cases_match_sklearn(k, seed):
  probs, y = _random_case(k, 200, seed)
  sums = metrics.sums_from_probabilities(probs, y)
  pred = probs.argmax(1)
  np.testing.assert_array_equal(sums['confusion'], skm.confusion_matrix(y, pred, labels=range(k)))
  assert sums['count'] == 200 and sums['correct'] == (pred == y).sum()
  r = metrics.report(sums, [f'c{i}' for i in range(k)])
  _check_classification(y, pred, k)
  assert r['macro_f1'] == pytest.approx(skm.f1_score(y, pred, average='macro'), abs=1e-12)
  assert r['nll'] == pytest.approx(skm.log_loss(y, probs, labels=range(k)), rel=1e-12)
  assert r['brier'] == pytest.approx(
      skm.brier_score_loss(y, probs, labels=range(k), scale_by_half=False), rel=1e-12)
  assert r['brier'] == pytest.approx(np.mean(np.sum((probs - np.eye(k)[y]) ** 2, 1)), rel=1e-12)
  if k == 2:  # The multi-class form is twice the classic binary Brier score.
    assert r['brier'] == pytest.approx(2 * skm.brier_score_loss(y, probs[:, 1]), rel=1e-12)
  # ECE from its definition over per-example bins.
  conf, correct = probs.max(1), (pred == y)
  b = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
  ece = sum(np.mean(b == i) * abs(correct[b == i].mean() - conf[b == i].mean())
            for i in range(15) if np.any(b == i))
  assert r['ece'] == pytest.approx(ece, abs=1e-12)
  assert r['accuracy'] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)


def test_sums_add_up_over_batches():
  probs, y = _random_case(5, 101, 3)
  whole = metrics.sums_from_probabilities(probs, y)
  parts = [metrics.sums_from_probabilities(probs[s], y[s]) for s in (slice(0, 40),
                                                                      slice(40, None))]
  for key in metrics.SUM_KEYS:
    np.testing.assert_allclose(np.asarray(parts[0][key]) + parts[1][key], whole[key],
                               rtol=1e-12, err_msg=key)


def test_ece_hand_worked_case():
  probs = np.array([[0.62, 0.28, 0.10],   # c 0.62: 15c = 9.3 -> bin 9, label 0: correct
                    [0.10, 0.64, 0.26],   # c 0.64: 15c = 9.6 -> bin 9, label 2: wrong
                    [0.90, 0.05, 0.05],   # c 0.90: 15c = 13.5 -> bin 13, correct
                    [0.02, 0.03, 0.95],   # c 0.95: 15c = 14.25 -> bin 14, correct
                    [0.45, 0.35, 0.20],   # c 0.45: 15c = 6.75 -> bin 6, label 1: wrong
                    [0.25, 0.50, 0.25]])  # c 0.50: 15c = 7.5 -> bin 7, correct
  y = np.array([0, 2, 0, 2, 1, 1])
  # ECE = sum_b |correct_b - sum of conf_b| / N:
  #   bin 9: |1 - 1.26| = 0.26; 13: 0.10; 14: 0.05; 6: |0 - 0.45| = 0.45; 7: 0.50 -> 1.36 / 6.
  r = metrics.report(metrics.sums_from_probabilities(probs, y), ['a', 'b', 'c'])
  assert r['ece'] == pytest.approx(1.36 / 6, abs=1e-12)
  rel = r['reliability']
  assert rel['count'] == [0] * 6 + [1, 1, 0, 2, 0, 0, 0, 1, 1]
  assert rel['accuracy'][9] == 0.5 and rel['confidence'][9] == pytest.approx(0.63)
  assert rel['accuracy'][6] == 0.0 and rel['accuracy'][7] == 1.0
  assert rel['accuracy'][0] is None and rel['confidence'][8] is None
  assert rel['bin_edges'][0] == 0.0 and rel['bin_edges'][-1] == 1.0 and len(rel['bin_edges']) == 16
  assert r['accuracy'] == pytest.approx(4 / 6)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_bin_edges(dtype):
  # Right-closed bins: b/15 is the top of bin b - 1; 0 goes to bin 0, 1 to bin 14.
  edges = np.arange(16, dtype=dtype) / dtype(15)
  np.testing.assert_array_equal(metrics.bin_index(edges), [0] + list(range(15)))
  # Just above an edge: the next bin (not at the very next float: 15c rounds back to b there).
  np.testing.assert_array_equal(metrics.bin_index(edges[1:-1] + dtype(1e-6)), range(1, 15))
  cases = [(np.full((1, 15), 1 / 15, dtype), 0, 0),  # Uniform, 15 classes: c = 1/15 exactly.
           (np.array([[0.0, 1.0]], dtype), 1, 14),    # c = 1.0.
           (np.array([[0.5, 0.5]], dtype), 0, 7)]     # c = 0.5: 15c = 7.5, in (7/15, 8/15].
  for probs, label, expect in cases:
    sums = metrics.sums_from_probabilities(probs, [label])
    assert np.flatnonzero(sums['bin_count']).tolist() == [expect], probs
    assert sums['correct'] == 1.0  # Ties go to the first class, as jnp.argmax.
    assert sums['bin_confidence'][expect] == pytest.approx(probs.max())


def test_zero_division_conventions():
  # Class 2 is never predicted: precision 0 (sklearn zero_division=0), F1 0.
  _check_classification(np.array([0, 1, 2, 2, 1, 0]), np.array([0, 1, 1, 0, 1, 0]), 3)
  # Class 2 only predicted, never true: recall 0, and balanced accuracy skips it.
  got = _check_classification(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), 3)
  assert got['balanced_accuracy'] == pytest.approx((0.5 + 1.0) / 2)
  assert got['per_class']['c2'] == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'support': 0}
  # Class 2 in neither: listed with zeros, left out of macro-F1 (sklearn's default labels).
  got = _check_classification(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
  assert got['macro_f1'] == pytest.approx((2 / 3 + 0.8) / 2)
  # Binary, one class never predicted.
  _check_classification(np.array([0, 1, 1, 0, 1]), np.array([1, 1, 1, 1, 1]), 2)


def test_log_loss_of_a_zero_probability_is_clipped_as_sklearn():
  probs = np.array([[1.0, 0.0], [0.3, 0.7]])
  y = np.array([1, 1])
  r = metrics.report(metrics.sums_from_probabilities(probs, y), ['a', 'b'])
  assert np.isfinite(r['nll'])
  assert r['nll'] == pytest.approx(skm.log_loss(y, probs, labels=[0, 1]), rel=1e-9)


def test_report_is_json_and_headline():
  probs, y = _random_case(5, 50, 4)
  sums = metrics.sums_from_probabilities(probs, y)
  # As the eval step hands them over: float32 0-d arrays and int32 matrices.
  device_like = {k: np.asarray(v, np.int32 if k == 'confusion' else np.float32)
                 for k, v in sums.items()}
  r = metrics.report(device_like, list('abcde'))
  assert json.loads(json.dumps(r, allow_nan=False)) == r
  assert type(r['count']) is int and type(r['per_class']['a']['support']) is int
  h = metrics.headline(r)
  assert list(h) == ['macro_f1', 'balanced_accuracy', 'nll', 'brier', 'ece']
  assert all(type(v) is float for v in h.values())
  assert h['nll'] == pytest.approx(metrics.report(sums, list('abcde'))['nll'], rel=1e-6)


def test_bad_inputs_say_why():
  sums = metrics.sums_from_probabilities(*_random_case(3, 10, 5))
  with pytest.raises(ValueError, match='2 class names for a 3x3'):
    metrics.report(sums, ['a', 'b'])
  with pytest.raises(ValueError, match='distinct'):
    metrics.report(sums, ['a', 'a', 'b'])
  with pytest.raises(KeyError, match='bin_count'):
    metrics.report({k: v for k, v in sums.items() if k != 'bin_count'}, 'abc')
  with pytest.raises(ValueError, match='no examples'):
    metrics.report(metrics.sums_from_probabilities(np.zeros((0, 3)), []), 'abc')
  with pytest.raises(ValueError, match=r'labels must be in \[0, 3\)'):
    metrics.sums_from_probabilities(np.full((2, 3), 1 / 3), [0, 3])
  with pytest.raises(ValueError, match=r'\[N, K>=2\]'):
    metrics.sums_from_probabilities(np.ones((2, 1)), [0, 0])


def test_save_reliability_writes_png(tmp_path):
  probs, y = _random_case(2, 80, 6)
  r = metrics.report(metrics.sums_from_probabilities(probs, y), ['dog', 'horse'])
  reporting.save_reliability(r, tmp_path / 'rel', title='test split')
  reporting.save_reliability(r['reliability'], tmp_path / 'bare')  # ECE recomputed.
  for stem in ('rel', 'bare'):
    blob = (tmp_path / f'{stem}.png').read_bytes()
    assert blob.startswith(b'\x89PNG\r\n\x1a\n') and len(blob) > 5000


def test_eval_step_sums_agree_with_the_host_reference():
  """`steps.batch_sums` (jitted, float32) against `sums_from_probabilities` of the same
  probabilities, padding masked out."""
  jax = pytest.importorskip('jax')
  jnp = jax.numpy
  from inception.train import steps  # pylint: disable=g-import-not-at-top
  if not hasattr(steps, 'batch_sums'):
    pytest.skip('steps.batch_sums not there yet')
  rng = np.random.default_rng(7)
  batch_sums = jax.jit(steps.batch_sums, static_argnums=3)  # Jitted, as in the eval step.
  for k, width in ((2, 1), (2, 2), (5, 5)):
    logits = rng.normal(0, 2.5, (33, width)).astype(np.float32)
    y = rng.integers(0, k, 33)
    mask = np.arange(33) < 30
    got = batch_sums([jnp.asarray(logits)], jnp.asarray(y), jnp.asarray(mask), k)
    probs = np.asarray(steps.probabilities(jnp.asarray(logits)))
    want = metrics.sums_from_probabilities(probs[:30], y[:30])
    for key in metrics.SUM_KEYS:
      np.testing.assert_allclose(np.asarray(got[key], np.float64), want[key], rtol=1e-5,
                                 atol=1e-4, err_msg=f'{key}, K={k}, {width} logits')


def test_ablation_rows_carry_the_test_metrics_and_leave_older_runs_blank():
  from inception.tools import ablations  # pylint: disable=g-import-not-at-top
  r = metrics.report(metrics.sums_from_probabilities(*_random_case(2, 40, 8)), ['a', 'b'])
  base = {'final_validation': {'accuracy': 0.9, 'loss': 0.3}, 'epochs': 1, 'synthetic': False,
          'final_train': {'accuracy': 0.9, 'loss': 0.3}, 'wall_time_s': 1.0}
  new = ablations._row('v', 0, dict(base, test={'accuracy': 0.8, 'metrics': r}))
  old = ablations._row('v', 1, dict(base, test={'accuracy': 0.7}))
  assert set(new) == set(ablations.COLUMNS)
  assert (new['test_macro_f1'], new['test_nll'], new['test_ece']) == (r['macro_f1'], r['nll'],
                                                                       r['ece'])
  assert all(old[c] is None for c in ablations.TEST_METRICS)
  summary = ablations.summary_rows([new, old])[0]
  assert summary['test_ece'] == f'{r["ece"]:.4f}'  # The older run has none: one value, no std.
