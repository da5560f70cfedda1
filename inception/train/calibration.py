"""Temperature scaling (Guo et al. 2017): one temperature T > 0 per (checkpoint step, test-time
augmentation), fitted on the validation split by NLL; probabilities are then computed from
logits / T. T changes confidences, not the ranking of a view's logits (so not the accuracy
without test-time augmentation).

The fitted temperatures live in `<workdir>/calibration.json` (format 1):

    {"format": 1, "temperatures": [{"step": S, "tta": "none", "temperature": T,
                                    "split": "validation", "count": N, "nll_before": ...,
                                    "nll_after": ..., "ece_before": ..., "ece_after": ...,
                                    "checkpoint": "best", "data": {...}, "fitted_at": ...}]}

A step identifies the parameters (`best/` holds a copy of some step's), so eval, predict, the
Python API and export apply the entry of the restored checkpoint's step and test-time
augmentation, and none other.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from inception import paths

FILE = 'calibration.json'
FORMAT = 1
# Search interval of T, wide enough for a barely trained model's near-zero logits; a fit at an
# end of it is refused (one temperature cannot fix such a model).
T_RANGE = (1e-4, 1e4)


def log_probabilities(view_logits: Sequence[np.ndarray], temperature: float) -> np.ndarray:
  """float64 [N, K] log of the mean over views of the class probabilities of logits /
  temperature. view_logits: per view [N, L] (L = 1: a binary head's one logit, K = 2)."""
  logps = []
  for logits in view_logits:
    z = np.asarray(logits, np.float64) / temperature
    if z.shape[-1] == 1:
      z = np.concatenate([np.zeros_like(z), z], axis=-1)  # softmax([0, z]) = sigmoid.
    logps.append(z - np.logaddexp.reduce(z, axis=-1, keepdims=True))
  return np.logaddexp.reduce(np.stack(logps), axis=0) - math.log(len(logps))


def nll(view_logits: Sequence[np.ndarray], labels: np.ndarray, temperature: float) -> float:
  """Mean -log p(label) of `log_probabilities` (float64)."""
  logp = log_probabilities(view_logits, temperature)
  return float(-np.mean(logp[np.arange(len(labels)), np.asarray(labels, np.int64)]))


class CalibrationError(ValueError):
  """No temperature minimises the validation NLL (the message says why and what to do)."""


def _all_views_correct(view_logits: Sequence[np.ndarray], labels: np.ndarray) -> bool:
  labels = np.asarray(labels, np.int64)
  for logits in view_logits:
    z = np.asarray(logits)
    pred = (z[:, 0] > 0).astype(np.int64) if z.shape[-1] == 1 else np.argmax(z, axis=-1)
    if np.any(pred != labels):
      return False
  return True


def fit_temperature(view_logits: Sequence[np.ndarray], labels: np.ndarray) -> float:
  """The T in `T_RANGE` that minimises `nll` (bounded scalar search over log T).

  Raises CalibrationError when there is no minimum: every view of every example classified
  correctly (the NLL then falls towards 0 as T -> 0, making the model ever more confident), or
  an NLL no higher at an end of `T_RANGE` than at the fit."""
  from scipy import optimize  # pylint: disable=g-import-not-at-top  # jax depends on scipy.
  n = len(labels)
  if not n:
    raise CalibrationError('Temperature scaling needs at least one validation example')
  if _all_views_correct(view_logits, labels):
    raise CalibrationError(
        f'the checkpoint classifies all {n} validation examples correctly, so the validation NLL '
        f'keeps falling as T -> 0 and has no minimum: a temperature fitted there would only make '
        f'the model more confident. Temperature scaling needs validation errors: a larger '
        f'validation split (data.validation_fraction) or another checkpoint.')
  lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
  res = optimize.minimize_scalar(lambda t: nll(view_logits, labels, float(np.exp(t))),
                                 bounds=(lo, hi), method='bounded',
                                 options={'xatol': 1e-7, 'maxiter': 500})
  t = float(np.exp(res.x))
  best = nll(view_logits, labels, t)
  # The NLL may also fall monotonically to a floor as T -> 0 (with test-time views, examples
  # half right give log 2 there): the search then stops anywhere on the flat floor.
  at_ends = [e for e in T_RANGE if nll(view_logits, labels, e) <= best * (1 + 1e-9)]
  if at_ends or not T_RANGE[0] * 1.001 < t < T_RANGE[1] / 1.001:
    raise CalibrationError(f'the validation NLL has no minimum inside T in {T_RANGE}: it is '
                           f'smallest towards T={(at_ends or [t])[0]:.4g}, so one temperature '
                           f'cannot calibrate this checkpoint')
  return t


def load(workdir: str | os.PathLike) -> list[dict]:
  """The entries of <workdir>/calibration.json ([] when the run was never calibrated)."""
  path = paths.as_path(workdir) / FILE
  if not path.exists():
    return []
  obj = json.loads(path.read_text())
  if obj.get('format') != FORMAT:
    raise ValueError(f'{path}: format {obj.get("format")!r}, this code reads format {FORMAT}; '
                     f'rerun --mode=calibrate to rewrite it')
  return list(obj['temperatures'])


def lookup(workdir: str | os.PathLike, step: int, tta: str) -> dict | None:
  """The entry fitted for checkpoint `step` with test-time augmentation `tta`, or None."""
  return next((e for e in load(workdir) if e['step'] == int(step) and e['tta'] == tta), None)


def save(workdir: str | os.PathLike, entry: dict) -> None:
  """Adds `entry` to <workdir>/calibration.json, replacing one of the same (step, tta)."""
  kept = [e for e in load(workdir) if (e['step'], e['tta']) != (entry['step'], entry['tta'])]
  entries = sorted(kept + [entry], key=lambda e: (e['step'], e['tta']))
  paths.write_text(paths.as_path(workdir) / FILE,
                   json.dumps({'format': FORMAT, 'temperatures': entries}, indent=2) + '\n')
