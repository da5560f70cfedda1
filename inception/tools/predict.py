"""Predict classes of image files or folders with a trained run's checkpoint, from its workdir
alone (see `inception.tools.evaluate.restore`); optional CSV with a JSON sidecar saying what made it."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np

import data
from inception import paths
from inception.tools import evaluate
from inception.train import sharding
from inception.train import steps as steps_lib


def predict(workdir: str | os.PathLike, inputs: Sequence[str], *, checkpoint: str = 'latest',
            output: str | None = None, config: ml_collections.ConfigDict | None = None,
            tta: str | None = None, log: Callable[[str], None] = print) -> list[dict]:
  """One row per readable image: {'path', 'class', 'probability', 'p_<class>'...}.

  inputs: image files and/or folders (searched recursively). output: CSV path (a URI too), or
  None; beside
  it `<output>.json` records the run, checkpoint, step, classes and whether the run was
  trained on synthetic data. config: optional --config (eval keys only, as `evaluate`;
  eval.tta='flip', or `tta`, averages each image's and its mirror image's probabilities).
  """
  if not inputs:
    raise ValueError('--inputs is empty: pass image files or folders to predict')
  r = evaluate.restore(workdir, checkpoint, config=config, tta=tta, log=log)
  repl, dsh = sharding.replicated(r.mesh), sharding.data_sharded(r.mesh)
  tta = evaluate.tta_of(r.config)
  step = steps_lib.make_predict_step(r.model, tta=tta, replicated=repl, batch_sharding=dsh)
  names = r.record.class_names
  files = data.usable_images(list(inputs), log)  # The same list in every process.
  rows = []
  for batch in data.file_batches([d for _, d in files], np.zeros(len(files), np.int32),
                                 r.config.data, batch_size=r.batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count(), with_index=True):
    dev = sharding.shard_batch({'image': batch['image'], 'index': batch['index']}, r.mesh)
    # The whole global batch in every process (several processes: gathered).
    probs = sharding.to_host(step(r.variables, dev['image']))
    for i, p in zip(sharding.to_host(dev['index']), probs):
      if i < 0:  # Padding.
        continue
      k = int(np.argmax(p))
      rows.append({'path': files[i][0], 'class': names[k], 'probability': float(p[k]),
                   **{f'p_{n}': float(p[j]) for j, n in enumerate(names)}})
  for row in rows:
    log(f'{row["class"]:>12s} {row["probability"]:.4f}  {row["path"]}')
  if output and jax.process_index() == 0:
    table = io.StringIO(newline='')
    w = csv.DictWriter(table, fieldnames=['path', 'class', 'probability'] +
                       [f'p_{n}' for n in names])
    w.writeheader()
    w.writerows(rows)
    paths.write_text(output, table.getvalue())
    about = {'workdir': os.fspath(paths.absolute(workdir)), 'checkpoint': checkpoint,
             'step': int(r.meta['step']), 'class_names': list(names), 'count': len(rows),
             'tta': tta, 'trained_on_synthetic_data': r.record.is_synthetic,
             'trained_on': r.record.data['description']}
    paths.write_text(f'{output}.json', json.dumps(about, indent=2) + '\n')
    log(f'Wrote {len(rows)} predictions to {output} (checkpoint step {r.meta["step"]}; '
        f'what made them: {output}.json)')
  if r.record.is_synthetic:
    log(r.record.data['banner'])
  return rows
