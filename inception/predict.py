"""Predict classes of image files or folders with a trained checkpoint; optional CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np

from inception import evaluate
from inception import sharding
from inception import steps as steps_lib
from inception import trainer


def predict(config: ml_collections.ConfigDict, workdir: str | Path,
            inputs: Sequence[str], *, checkpoint: str = 'latest', output: str | None = None,
            log: Callable[[str], None] = print) -> list[dict]:
  """One row per readable image: {'path', 'class', 'probability', 'p_<class>'...}.

  inputs: image files and/or folders (searched recursively). output: CSV path, or None.
  """
  if not inputs:
    raise ValueError('--inputs is empty: pass image files or folders to predict')
  import data  # pylint: disable=g-import-not-at-top
  setup = trainer.build(config, log=log, with_weights=False, workdir=workdir)
  model_vars, meta = evaluate.restore_model(config, workdir, checkpoint, setup, log)
  repl, dsh = sharding.replicated(setup.mesh), sharding.data_sharded(setup.mesh)
  step = steps_lib.make_predict_step(setup.model, replicated=repl, batch_sharding=dsh)
  names = setup.class_names
  rows = []
  for batch in data.folder_batches(list(inputs), config.data,
                                   batch_size=config.eval.batch_size, log=log):
    dev = sharding.shard_batch({'image': batch['image']}, setup.mesh)
    probs = np.asarray(jax.device_get(step(model_vars, dev['image'])))
    for path, ok, p in zip(batch['path'], batch['mask'], probs):
      if not ok:
        continue
      k = int(np.argmax(p))
      rows.append({'path': str(path), 'class': names[k], 'probability': float(p[k]),
                   **{f'p_{n}': float(p[i]) for i, n in enumerate(names)}})
  for r in rows:
    log(f'{r["class"]:>12s} {r["probability"]:.4f}  {r["path"]}')
  if output:
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with open(output, 'w', newline='') as f:
      w = csv.DictWriter(f, fieldnames=['path', 'class', 'probability'] +
                         [f'p_{n}' for n in names])
      w.writeheader()
      w.writerows(rows)
    log(f'Wrote {len(rows)} predictions to {output} (checkpoint step {meta["step"]})')
  return rows
