"""The seed notebook's recipe in Keras 2 (tf_keras): the reference our Flax runs must match.

Reproduces, as faithfully as tf_keras allows, the seed transfer-learning notebook:

    ImageDataGenerator(rescale=1/255, rotation_range=40, width_shift_range=0.2,
                       height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
                       horizontal_flip=True)                    train (validation/test: rescale only)
    flow_from_directory(target_size=(150, 150), batch_size=20, class_mode='binary')
    InceptionV3(include_top=False) with ImageNet weights, every layer frozen, cut at 'mixed7'
    -> Flatten -> Dense(1024, relu) -> Dropout(0.2) -> Dense(1, sigmoid)
    RMSprop(1e-3), binary_crossentropy, accuracy; fit(epochs=10, steps_per_epoch=45,
    validation_steps=5); then evaluate on the held-out test split.

`run_recipe` trains and evaluates it once on class-folder trees; given our ImageNet variables
(the project's converted 2015 TensorFlow graph, `inception.weights.load('tf2015')`), loaded into
Keras by conv/BN creation order (`keras_models.load_flax_variables`), Keras and Flax start from
identical numbers. The 2015 graph's mixed10 pool branch is a max pool where Keras' InceptionV3
has an average pool; that block is after the mixed7 cut, so it does not matter here.
`summarize` and `format_table` give the mean +- std over seeds next to the notebook's numbers.

The runs over seeds on the project's splits (`data.prepare` with `split_seed=s`, so Keras reads
exactly the files our Flax runs use) are `bench/keras_seed_recipe.py`.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tests.reference import keras_models

# The seed notebook's final-epoch numbers (train acc, val acc, train loss, val loss).
SEED_REPORTED = {'accuracy': 0.9433, 'val_accuracy': 0.9200, 'loss': 0.2262,
                 'val_loss': 0.3355}
HISTORY_KEYS = ('loss', 'accuracy', 'val_loss', 'val_accuracy')


def epoch_timer():
  """A Keras callback recording per epoch (training + validation) `.seconds` (wall) and
  `.cpu_seconds` (this process, all threads; on a shared machine the wall time varies with the
  load, the CPU time much less)."""
  import tf_keras

  class EpochTimer(tf_keras.callbacks.Callback):

    def __init__(self):
      super().__init__()
      self.seconds: list[float] = []
      self.cpu_seconds: list[float] = []
      self._start = self._cpu_start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
      self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
      self.seconds.append(time.perf_counter() - self._start)
      self.cpu_seconds.append(time.process_time() - self._cpu_start)

  return EpochTimer()


def check_files(flow, split: str, expected: Mapping[str, int]) -> None:
  """Raises ValueError unless a Keras flow holds exactly `expected` {relative path: label}.

  Paths are relative to the split folder with '/' separators ('dog/dog.4002.jpg'), as in the
  manifest's `splits[split][i]['path']` without its leading '<split>/'.
  """
  got = {name.replace(os.sep, '/'): int(label) for name, label in zip(flow.filenames,
                                                                       flow.classes)}
  if got == dict(expected):
    return
  missing = sorted(set(expected) - set(got))
  extra = sorted(set(got) - set(expected))
  relabelled = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
  raise ValueError(f'{split} images under {flow.directory} differ from the manifest: '
                   f'{len(missing)} missing {missing[:3]}, {len(extra)} extra {extra[:3]}, '
                   f'{len(relabelled)} with another label {relabelled[:3]}; re-run data.prepare '
                   '(or delete that folder) so Keras reads the same files as the Flax runs')


def manifest_files(root: str | os.PathLike) -> dict[str, dict[str, int]]:
  """{split: {path relative to the split folder: label}} from `<root>/manifest.json`."""
  manifest_path = pathlib.Path(root) / 'manifest.json'
  manifest = json.loads(manifest_path.read_text())
  try:
    return {split: {e['path'].split('/', 1)[1]: int(e['label']) for e in entries}
            for split, entries in manifest['splits'].items()}
  except (KeyError, IndexError, TypeError) as e:
    raise ValueError(f'{manifest_path} has no splits/<split>/[{{path, label}}] lists ({e!r}); '
                     'was it written by data.prepare?') from None


def run_recipe(train_dir: str | os.PathLike, validation_dir: str | os.PathLike,
               test_dir: str | os.PathLike | None = None, *, seed: int,
               variables: Mapping[str, Any] | None = None,
               class_names: Sequence[str] | None = None, image_size: int = 150,
               batch_size: int = 20, epochs: int = 10, steps_per_epoch: int | None = None,
               validation_steps: int | None = None, cut: str = 'mixed7',
               learning_rate: float = 1e-3,
               expected_files: Mapping[str, Mapping[str, int]] | None = None,
               verbose: int = 2) -> dict[str, Any]:
  """Trains and evaluates the seed recipe once on class-folder trees `<dir>/<class>/*`.

  Args:
    train_dir, validation_dir, test_dir: class-folder trees (test_dir optional).
    seed: seeds python/numpy/TF (`tf_keras.utils.set_random_seed`) and the training shuffle.
    variables: Flax InceptionV3 variables (None: random backbone, for tests).
    class_names: label order (label i = class_names[i]); None = sorted sub-folders (Keras).
    steps_per_epoch, validation_steps: None = ceil(images / batch_size) (45 and 5 in the seed).
    expected_files: {split: {relative path: label}} (see `manifest_files`); when given, each
      flow must hold exactly these files, checked before training.
    verbose: Keras fit verbosity.

  Returns:
    JSON-able dict: 'history' {loss, accuracy, val_loss, val_accuracy: per-epoch lists},
    'final' (last epoch's four values), 'test' {loss, accuracy} or None, 'epoch_seconds',
    'epoch_cpu_seconds', 'fit_seconds', 'test_seconds', 'test_cpu_seconds',
    'load_average_after' (1/5/15 min), 'num_images' per split, 'class_indices', 'steps_per_epoch',
    'validation_steps'.
  """
  import tf_keras
  from tf_keras.preprocessing.image import ImageDataGenerator

  tf_keras.backend.clear_session()
  tf_keras.utils.set_random_seed(seed)
  classes = list(class_names) if class_names else None
  flow_args = dict(target_size=(image_size, image_size), batch_size=batch_size,
                   class_mode='binary', classes=classes, follow_links=True)
  train_gen = keras_models.augmentation(rescale=1.0 / 255)
  eval_gen = ImageDataGenerator(rescale=1.0 / 255)
  train_flow = train_gen.flow_from_directory(str(train_dir), shuffle=True, seed=seed,
                                             **flow_args)
  # Evaluation flows neither shuffle nor reseed numpy: no race with the training flow's
  # per-batch np.random.seed(seed + batches_seen), which keeps the augmentation reproducible.
  val_flow = eval_gen.flow_from_directory(str(validation_dir), shuffle=False, **flow_args)
  for name, flow in (('train', train_flow), ('validation', val_flow)):
    if flow.samples == 0:
      raise ValueError(f'{name} directory {flow.directory} has no images in class folders '
                       f'{classes or "(any)"}')
  if train_flow.class_indices != val_flow.class_indices:
    raise ValueError(f'train classes {train_flow.class_indices} differ from validation '
                     f'classes {val_flow.class_indices}; give class_names')
  if len(train_flow.class_indices) != 2:
    raise ValueError(f'the recipe is binary but {train_dir} has classes '
                     f'{train_flow.class_indices}')
  flows = {'train': train_flow, 'validation': val_flow}
  if test_dir is not None:
    flows['test'] = eval_gen.flow_from_directory(str(test_dir), shuffle=False, **flow_args)
    if flows['test'].class_indices != train_flow.class_indices:
      raise ValueError(f'test classes {flows["test"].class_indices} differ from train classes '
                       f'{train_flow.class_indices}')
  for split, flow in flows.items():
    if expected_files is not None:
      check_files(flow, split, expected_files.get(split, {}))
  steps = steps_per_epoch or math.ceil(train_flow.samples / batch_size)
  val_steps = validation_steps or math.ceil(val_flow.samples / batch_size)

  model = keras_models.build_model(image_size, variables, cut, learning_rate)
  timer = epoch_timer()
  start = time.perf_counter()
  fit = model.fit(train_flow, validation_data=val_flow, steps_per_epoch=steps, epochs=epochs,
                  validation_steps=val_steps, callbacks=[timer], verbose=verbose)
  fit_seconds = time.perf_counter() - start
  history = {k: [float(v) for v in fit.history[k]] for k in HISTORY_KEYS}

  test, test_seconds, test_cpu_seconds, num_test = None, 0.0, 0.0, 0
  if 'test' in flows:
    test_flow = flows['test']
    num_test = test_flow.samples
    if num_test:
      start, cpu_start = time.perf_counter(), time.process_time()
      loss, acc = model.evaluate(test_flow, steps=math.ceil(num_test / batch_size),
                                 verbose=0)
      test_seconds = time.perf_counter() - start
      test_cpu_seconds = time.process_time() - cpu_start
      test = {'loss': float(loss), 'accuracy': float(acc)}
  return {
      'seed': seed,
      'history': history,
      'final': {k: history[k][-1] for k in HISTORY_KEYS},
      'test': test,
      'epoch_seconds': [float(s) for s in timer.seconds],
      'epoch_cpu_seconds': [float(s) for s in timer.cpu_seconds],
      'fit_seconds': fit_seconds,
      'test_seconds': test_seconds,
      'test_cpu_seconds': test_cpu_seconds,
      'load_average_after': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
      'num_images': {'train': train_flow.samples, 'validation': val_flow.samples,
                     'test': num_test},
      'class_indices': dict(train_flow.class_indices),
      'steps_per_epoch': steps,
      'validation_steps': val_steps,
  }


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
  """Mean and sample std over runs of the final metrics and test metrics."""
  values: dict[str, list[float]] = {k: [r['final'][k] for r in runs] for k in HISTORY_KEYS}
  if all(r['test'] for r in runs):
    values['test_accuracy'] = [r['test']['accuracy'] for r in runs]
    values['test_loss'] = [r['test']['loss'] for r in runs]
  values['epoch_seconds'] = [statistics.fmean(r['epoch_seconds']) for r in runs]
  if all('epoch_cpu_seconds' in r for r in runs):
    values['epoch_cpu_seconds'] = [statistics.fmean(r['epoch_cpu_seconds']) for r in runs]
  return {k: {'mean': statistics.fmean(v), 'std': statistics.stdev(v) if len(v) > 1 else 0.0,
              'n': len(v)} for k, v in values.items()}


def format_table(runs: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
  """Per-seed rows, mean +- std, and the seed notebook's reported numbers."""
  cols = ('accuracy', 'val_accuracy', 'loss', 'val_loss', 'test_accuracy', 'test_loss',
          'epoch_seconds', 'epoch_cpu_seconds')
  head = ('run', 'train acc', 'val acc', 'train loss', 'val loss', 'test acc', 'test loss',
          'wall s/epoch', 'CPU s/epoch')
  rows = [head]
  for r in runs:
    t = r['test'] or {}
    vals = [r['final']['accuracy'], r['final']['val_accuracy'], r['final']['loss'],
            r['final']['val_loss'], t.get('accuracy', math.nan), t.get('loss', math.nan),
            statistics.fmean(r['epoch_seconds']),
            statistics.fmean(r.get('epoch_cpu_seconds') or [math.nan])]
    rows.append([f'seed {r["seed"]}'] + [f'{v:.4f}' if i < 6 else f'{v:.1f}'
                                         for i, v in enumerate(vals)])
  rows.append(['mean ± std'] + [
      (f'{summary[c]["mean"]:.4f} ± {summary[c]["std"]:.4f}' if 'seconds' not in c else
       f'{summary[c]["mean"]:.1f} ± {summary[c]["std"]:.1f}') if c in summary else '-'
      for c in cols])
  rows.append(['seed notebook'] + [f'{SEED_REPORTED[c]:.4f}' if c in SEED_REPORTED else '-'
                                   for c in cols])
  widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
  return '\n'.join('  '.join(cell.rjust(w) if i else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths))) for row in rows)
