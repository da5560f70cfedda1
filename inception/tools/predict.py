"""Predict classes of image files or folders with a trained run's checkpoint, from its workdir
alone (see `inception.tools.evaluate.restore`), through the Python API's `Classifier`; optional
CSV with a JSON sidecar saying what made it."""

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
from inception.tools import classifier
from inception.tools import evaluate


def predict(workdir: str | os.PathLike, inputs: Sequence[str], *, checkpoint: str = 'latest',
            output: str | None = None, config: ml_collections.ConfigDict | None = None,
            tta: str | None = None, log: Callable[[str], None] = print) -> list[dict]:
  """One row per readable image: {'path', 'class', 'probability', 'p_<class>'...}.

  inputs: image files and/or folders (searched recursively; unreadable files are skipped with
  a message). output: CSV path (a URI too), or None; beside it `<output>.json` records the run,
  checkpoint, step, classes, tta, temperature and whether the run was trained on synthetic
  data (`Classifier.describe`). config: optional --config (eval keys only, as `evaluate`;
  eval.tta='flip', or `tta`, averages each image's and its mirror image's probabilities).
  A temperature fitted by --mode=calibrate for the checkpoint is applied.
  """
  if not inputs:
    raise ValueError('--inputs is empty: pass image files or folders to predict')
  clf = classifier.Classifier(evaluate.restore(workdir, checkpoint, config=config, tta=tta,
                                               log=log), log)
  names = clf.class_names
  files = data.usable_images(list(inputs), log)  # The same list in every process.
  probs = clf.predict_files([d for _, d in files]) if files else np.zeros([0, len(names)])
  rows = []
  for (path, _), p in zip(files, probs):
    k = int(np.argmax(p))
    rows.append({'path': path, 'class': names[k], 'probability': float(p[k]),
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
    about = {**clf.describe(), 'count': len(rows)}
    paths.write_text(f'{output}.json', json.dumps(about, indent=2) + '\n')
    log(f'Wrote {len(rows)} predictions to {output} (checkpoint step {clf.step}; '
        f'what made them: {output}.json)')
  if clf.restored.record.is_synthetic:
    log(clf.restored.record.data['banner'])
  return rows
