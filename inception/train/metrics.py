"""The metrics a paper reports, from streaming sums: per-class precision/recall/F1, macro-F1,
balanced accuracy, NLL, Brier score, ECE and a reliability diagram's bins. numpy only.

The eval step (`inception.train.steps.batch_sums`) returns, summed over the real (unpadded)
examples of a split, a `sums` dict:
  'loss'            float        sum of -log p(true class) (nats)
  'correct'         float        number of correct top-1 predictions
  'count'           float        number of examples N
  'confusion'       int [K, K]   rows: true class, columns: predicted class
  'brier'           float        sum of sum_k (p_k - y_k)^2 (y one-hot: the multi-class form,
                                 in [0, 2]; for K = 2 twice sklearn's binary brier_score_loss)
  'bin_count'       [15]         examples whose top-label confidence c is in bin b
  'bin_confidence'  [15]         sum of their c
  'bin_correct'     [15]         number of them predicted correctly
Bin b (0..14) holds c in (b/15, (b+1)/15] (c == 0 in bin 0): index clip(ceil(15 c) - 1, 0, 14).
Sums, not means, so batches and hosts add up exactly; everything here divides only at the end.
`sums_from_probabilities` computes the same dict on the host from probabilities.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ECE_BINS = 15  # Guo et al. 2017's equal-width bins; the eval step (`steps.batch_sums`) uses it.

SUM_KEYS = ('loss', 'correct', 'count', 'confusion', 'brier', 'bin_count', 'bin_confidence',
            'bin_correct')
HEADLINE = ('macro_f1', 'balanced_accuracy', 'nll', 'brier', 'ece')


def bin_index(confidence: np.ndarray) -> np.ndarray:
  """int [N] bin of each top-label confidence in [0, 1]: (b/15, (b+1)/15] -> b, 0 -> 0.

  Computed in the confidences' own float dtype, as the eval step does: float32(1/15) widened
  to float64 first would be a hair above 1/15 and land in bin 1.
  """
  c = np.asarray(confidence)
  if not np.issubdtype(c.dtype, np.floating):
    c = c.astype(np.float64)
  return np.clip(np.ceil(c * c.dtype.type(ECE_BINS)).astype(np.int64) - 1, 0, ECE_BINS - 1)


def sums_from_probabilities(probs: np.ndarray, labels: np.ndarray,
                            num_classes: int | None = None) -> dict:
  """The eval step's `sums` (module doc) of class probabilities [N, K] (K >= 2, rows summing to
  1) and int labels [N] in [0, K); num_classes, when given, must be K.

  Prediction: argmax (the first class on ties, as jnp.argmax). NLL clips p(true class) below at
  the float eps of probs' dtype, as sklearn's log_loss does, so p == 0 gives a finite loss.
  """
  probs = np.asarray(probs)
  if not np.issubdtype(probs.dtype, np.floating):
    probs = probs.astype(np.float64)
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  if probs.ndim != 2 or probs.shape[1] < 2:
    raise ValueError(f'probs must be [N, K>=2]; got shape {probs.shape}')
  n, k = probs.shape
  if num_classes is not None and num_classes != k:
    raise ValueError(f'num_classes={num_classes} but probs has {k} columns')
  if labels.shape[0] != n:
    raise ValueError(f'{labels.shape[0]} labels for {n} rows of probs')
  if n and (labels.min() < 0 or labels.max() >= k):
    raise ValueError(f'labels must be in [0, {k}); got [{labels.min()}, {labels.max()}]')
  eps = np.finfo(probs.dtype).eps
  b = bin_index(probs.max(axis=1))  # In probs' dtype (see bin_index); the sums in float64.
  p = probs.astype(np.float64)
  p_true = p[np.arange(n), labels]
  pred = np.argmax(p, axis=1)
  correct = (pred == labels).astype(np.float64)
  onehot = np.eye(k)[labels]
  top = p.max(axis=1)
  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (labels, pred), 1)
  return {'loss': float(np.sum(-np.log(np.clip(p_true, eps, None)))),
          'correct': float(correct.sum()), 'count': float(n), 'confusion': confusion,
          'brier': float(((p - onehot) ** 2).sum()),
          'bin_count': np.bincount(b, minlength=ECE_BINS).astype(np.float64),
          'bin_confidence': np.bincount(b, top, ECE_BINS).astype(np.float64),
          'bin_correct': np.bincount(b, correct, ECE_BINS).astype(np.float64)}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den with 0.0 where den == 0 (sklearn's zero_division default)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def classification(confusion: np.ndarray, class_names: Sequence[str]) -> dict:
  """Per-class and averaged classification metrics of a confusion matrix int [K, K] (rows:
  true class, columns: predicted class; K == len(class_names), names distinct).

  Returns {'per_class': {name: {'precision', 'recall', 'f1', 'support'}}, 'macro_f1',
  'balanced_accuracy', 'accuracy'} (python floats; support an int). sklearn's conventions
  (precision_recall_fscore_support, f1_score(average='macro'), balanced_accuracy_score):
  - a ratio with a zero denominator is 0.0 (zero_division default): precision of a class never
    predicted, recall of a class absent from y_true, F1 of a class with tp + fp + fn == 0;
    F1 = 2 tp / (2 tp + fp + fn);
  - macro_f1 is the mean F1 over the classes present in y_true or y_pred (sklearn's default
    `labels`); a class in neither is listed in per_class (all zeros) but not averaged;
  - balanced_accuracy is the mean recall over the classes present in y_true (sklearn drops
    classes only predicted, with a warning), not adjusted for chance.
  """
  c = np.asarray(confusion, np.int64)
  names = list(class_names)
  if c.ndim != 2 or c.shape[0] != c.shape[1]:
    raise ValueError(f'confusion must be square [K, K]; got shape {c.shape}')
  if len(names) != c.shape[0]:
    raise ValueError(f'{len(names)} class names for a {c.shape[0]}x{c.shape[0]} confusion')
  if len(set(names)) != len(names):
    raise ValueError(f'class names must be distinct; got {names}')
  total = int(c.sum())
  if total == 0:
    raise ValueError('confusion is empty (no examples): nothing to report')
  tp = np.diag(c).astype(np.float64)
  support = c.sum(axis=1)  # True class counts.
  predicted = c.sum(axis=0)
  precision = _ratio(tp, predicted)
  recall = _ratio(tp, support)
  f1 = _ratio(2 * tp, support + predicted)  # 2tp + fp + fn == support + predicted.
  present = (support + predicted) > 0
  per_class = {name: {'precision': float(precision[i]), 'recall': float(recall[i]),
                      'f1': float(f1[i]), 'support': int(support[i])}
               for i, name in enumerate(names)}
  return {'per_class': per_class, 'macro_f1': float(f1[present].mean()),
          'balanced_accuracy': float(recall[support > 0].mean()),
          'accuracy': float(tp.sum() / total)}


def _check_sums(sums: dict) -> float:
  missing = [k for k in SUM_KEYS if k not in sums]
  if missing:
    raise KeyError(f'sums lacks {missing} (an eval step from before the calibration sums?)')
  count = float(sums['count'])
  if count <= 0:
    raise ValueError('sums has count 0 (no examples): nothing to report')
  bin_total = float(np.sum(sums['bin_count']))
  if abs(bin_total - count) > 0.5:
    raise ValueError(f'sums: bin_count adds up to {bin_total}, count is {count}')
  return count


def calibration(sums: dict) -> dict:
  """{'nll' (mean nats), 'brier' (mean multi-class Brier score, in [0, 2]), 'ece', 'reliability':
  {'bin_edges' [16], 'count' [15], 'confidence' [15], 'accuracy' [15]}} of `sums`.

  ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_b - confidence_sum_b| / N (15
  equal-width bins of the top-label confidence). 'confidence' and 'accuracy' are per-bin means,
  None for an empty bin.
  """
  n = _check_sums(sums)
  counts = np.asarray(sums['bin_count'], np.float64).reshape(ECE_BINS)
  conf = np.asarray(sums['bin_confidence'], np.float64).reshape(ECE_BINS)
  correct = np.asarray(sums['bin_correct'], np.float64).reshape(ECE_BINS)
  mean = lambda s: [float(s[b] / counts[b]) if counts[b] > 0 else None for b in range(ECE_BINS)]
  return {'nll': float(sums['loss']) / n, 'brier': float(sums['brier']) / n,
          'ece': float(np.abs(correct - conf).sum() / n),
          'reliability': {'bin_edges': [b / ECE_BINS for b in range(ECE_BINS + 1)],
                          'count': [int(round(x)) for x in counts],
                          'confidence': mean(conf), 'accuracy': mean(correct)}}


def report(sums: dict, class_names: Sequence[str]) -> dict:
  """`classification(sums['confusion'], class_names)` and `calibration(sums)` merged, with
  'count' (int) and 'accuracy' (correct / count); JSON-serialisable (python floats, ints,
  lists, None). A 'calibrated' sub-dict of sums (temperature-scaled) is not read: report it
  with its own call."""
  n = _check_sums(sums)
  out: dict[str, Any] = {'count': int(round(n))}
  out.update(classification(sums['confusion'], class_names))
  out.update(calibration(sums))
  out['accuracy'] = float(sums['correct']) / n
  return out


def headline(report_: dict) -> dict:
  """The scalars of a `report` for tables: macro_f1, balanced_accuracy, nll, brier, ece."""
  return {k: report_[k] for k in HEADLINE}


def format_report(report_: dict) -> str:
  """The report in a few lines: headline scalars, then precision/recall/F1/support per class."""
  lines = ['  '.join(f'{k} {report_[k]:.4f}' for k in ('accuracy',) + HEADLINE),
           f'{"class":>14s} {"precision":>9s} {"recall":>9s} {"f1":>9s} {"support":>8s}']
  for name, m in report_['per_class'].items():
    lines.append(f'{name:>14s} {m["precision"]:9.4f} {m["recall"]:9.4f} {m["f1"]:9.4f} '
                 f'{m["support"]:8d}')
  return '\n'.join(lines)
