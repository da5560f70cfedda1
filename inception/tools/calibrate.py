"""Fit temperature scaling on a trained run's validation split (`--mode=calibrate`).

    python train.py --workdir W --mode=calibrate --checkpoint=best [--tta=flip]

One temperature T for the checkpoint's step and test-time augmentation, minimising the NLL of
the validation split's probabilities of logits / T (`inception.train.calibration`); stored in
`<workdir>/calibration.json`. Eval, predict, the Python API and export then apply it to that
checkpoint, and their outputs record T. Accuracy does not change (without test-time
augmentation: dividing logits by T > 0 keeps their argmax).
"""

from __future__ import annotations

import datetime
import os
from typing import Callable

import jax
import ml_collections
import numpy as np

from inception import paths
from inception.tools import evaluate
from inception.train import calibration
from inception.train import metrics as metrics_lib
from inception.train import sharding
from inception.train import steps as steps_lib


def validation_logits(r: evaluate.Restored, log: Callable[[str], None] = print
                      ) -> tuple[list[np.ndarray], np.ndarray, dict]:
  """(per view: logits [N, L], labels int [N], the data's identity) of the run's validation
  split, unscaled, in manifest order, in every process."""
  batches, _, _, identity = evaluate.data_batches(r, split='validation', log=log)
  step = steps_lib.make_logits_step(r.model, tta=evaluate.tta_of(r.config),
                                    replicated=sharding.replicated(r.mesh),
                                    batch_sharding=sharding.data_sharded(r.mesh))
  views: list[list[np.ndarray]] = []
  labels = []
  for batch in batches:
    dev = sharding.shard_batch(batch, r.mesh)
    keep = sharding.to_host(dev['mask']).astype(bool)
    out = step(r.variables, dev['image'])
    views = views or [[] for _ in out]
    for v, logits in zip(views, out):
      v.append(sharding.to_host(logits)[keep])
    labels.append(sharding.to_host(dev['label'])[keep])
  return [np.concatenate(v) for v in views], np.concatenate(labels), identity


def calibrate(workdir: str | os.PathLike, *, checkpoint: str = 'latest',
              config: ml_collections.ConfigDict | None = None, tta: str | None = None,
              log: Callable[[str], None] = print) -> dict:
  """Fits and stores the temperature of `checkpoint` (with `tta`, else the run's eval.tta);
  returns the calibration.json entry: T, NLL, ECE and Brier score on validation before and
  after, step, checkpoint and the data's identity. Raises
  calibration.CalibrationError (nothing stored) when no temperature minimises the NLL."""
  r = evaluate.restore(workdir, checkpoint, config=config, tta=tta, calibrated=False, log=log)
  logits, labels, identity = validation_logits(r, log)
  try:
    t = calibration.fit_temperature(logits, labels)
  except calibration.CalibrationError as e:
    raise calibration.CalibrationError(
        f'Cannot calibrate step {int(r.meta["step"])} of {workdir} ({checkpoint}): {e}') from None
  k = max(len(r.record.class_names), 2)
  before, after = (metrics_lib.calibration(metrics_lib.sums_from_probabilities(
      np.exp(calibration.log_probabilities(logits, temp)), labels, k)) for temp in (1.0, t))
  tta_used = evaluate.tta_of(r.config)
  entry = {'step': int(r.meta['step']), 'tta': tta_used, 'temperature': t,
           'checkpoint': checkpoint, 'split': 'validation', 'count': int(len(labels)),
           'nll_before': before['nll'], 'nll_after': after['nll'],
           'ece_before': before['ece'], 'ece_after': after['ece'],
           'brier_before': before['brier'], 'brier_after': after['brier'],
           'data': identity,
           'fitted_at': datetime.datetime.now(datetime.timezone.utc).isoformat(
               timespec='seconds')}
  if jax.process_index() == 0:
    calibration.save(workdir, entry)
  log(f'calibrated step {entry["step"]} ({checkpoint}, tta={tta_used}) on validation '
      f'(n={entry["count"]}): T={t:.6g}; nll {before["nll"]:.4f} -> {after["nll"]:.4f}, '
      f'ece {before["ece"]:.4f} -> {after["ece"]:.4f}; stored in '
      f'{paths.as_path(workdir) / calibration.FILE}')
  return entry
