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

The ImageNet weights are the project's converted 2015 TensorFlow graph
(`inception.weights.load('tf2015')`), loaded into Keras by conv/BN creation order (see
`keras_models.load_flax_variables`), so Keras and Flax start from identical numbers. The 2015
graph's mixed10 pool branch is a max pool where Keras' InceptionV3 has an average pool; that
block is after the mixed7 cut, so it does not matter here.

Per seed s: the data split uses `split_seed=s` (`data.prepare`, so Keras reads exactly the files
our Flax runs use), `tf_keras.utils.set_random_seed(s)` seeds python/numpy/TF, and the training
flow shuffles with seed s.

Usage (from the repo root):

    .venv/bin/python bench/keras_recipe.py --seeds 0,1,2 [--epochs 10] \
        [--images-per-class 500] [--out results/keras_seed_recipe.json] [--threads 2]

Writes a JSON (per-epoch history, final train/validation/test metrics, wall times,
environment) and prints a per-seed table with mean +- std next to the seed notebook's numbers.

This file is the recipe runner; the Keras model and the weight copy are in `keras_models.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

BENCH_DIR = str(pathlib.Path(__file__).resolve().parent)
if BENCH_DIR not in sys.path:  # Also when imported as bench.keras_recipe (tests): the siblings.
  sys.path.insert(0, BENCH_DIR)
# `common` also puts the repo root on sys.path (for `inception` and `data`).
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import keras_models  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO_ROOT = common.REPO_ROOT

# The seed notebook's final-epoch numbers (train acc, val acc, train loss, val loss).
SEED_REPORTED = {'accuracy': 0.9433, 'val_accuracy': 0.9200, 'loss': 0.2262,
                 'val_loss': 0.3355}
HISTORY_KEYS = ('loss', 'accuracy', 'val_loss', 'val_accuracy')


def _epoch_timer():
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
  timer = _epoch_timer()
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


def environment(threads: int) -> dict[str, Any]:
  """Versions and machine facts recorded with the results (`common.environment_facts`)."""
  return {**common.environment_facts(), **common.versions(('scipy', 'pillow')),
          'tf_threads': threads}


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


def _default_data_path() -> str:
  """$ANIMALS10_DIR, else ../shared/data/animals10-standin next to the repo, else '' (search)."""
  if os.environ.get('ANIMALS10_DIR'):
    return os.environ['ANIMALS10_DIR']
  shared = REPO_ROOT.parent / 'shared' / 'data' / 'animals10-standin'
  return str(shared) if shared.exists() else ''


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--seeds', default='0', help='comma-separated seeds, e.g. 0,1,2')
  p.add_argument('--epochs', type=int, default=10)
  p.add_argument('--images-per-class', type=int, default=500,
                 help='train+validation images per class (split 90/10)')
  p.add_argument('--image-size', type=int, default=150)
  p.add_argument('--batch-size', type=int, default=20)
  p.add_argument('--weights', default='tf2015',
                 help="name or path for inception.weights.load ('tf2015', 'keras', a file)")
  p.add_argument('--data-path', default=None,
                 help='Animals-10 folder holding raw-img/ (default: $ANIMALS10_DIR or '
                      '../shared/data/animals10-standin)')
  p.add_argument('--out', default='results/keras_seed_recipe.json')
  p.add_argument('--threads', type=int, default=min(2, os.cpu_count() or 1),
                 help='TensorFlow intra- and inter-op threads')
  p.add_argument('--verbose', type=int, default=2, help='Keras fit verbosity (0, 1, 2)')
  args = p.parse_args(argv)
  try:
    args.seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  except ValueError:
    p.error(f'--seeds={args.seeds!r} must be comma-separated integers, e.g. 0,1,2')
  if not args.seeds:
    p.error('--seeds is empty')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the recipe for every seed; returns (and writes to --out) the JSON record."""
  args = _parse_args(argv)
  common.quiet_tensorflow()
  keras_models.configure_tensorflow(args.threads)
  import data
  import data.config
  from inception import weights

  pretrained = weights.load(args.weights)
  print(f'weights: {pretrained.source} ({pretrained.path}, sha256 {pretrained.sha256[:12]})')
  out = pathlib.Path(args.out)
  record: dict[str, Any] = {
      'recipe': 'seed notebook in tf_keras: frozen InceptionV3 cut at mixed7, Flatten, '
                'Dense(1024, relu), Dropout(0.2), Dense(1, sigmoid), RMSprop',
      'args': dict(vars(args)),
      'weights': {'source': pretrained.source, 'sha256': pretrained.sha256,
                  'path': str(pretrained.path)},
      'augmentation': keras_models.TRAIN_AUGMENTATION, 'seed_reported': SEED_REPORTED,
      'environment': environment(args.threads), 'runs': [],
  }
  for seed in args.seeds:
    cfg = data.config.get_config()
    cfg.path = args.data_path if args.data_path is not None else _default_data_path()
    cfg.images_per_class = args.images_per_class
    cfg.split_seed = seed
    cfg.image_size = args.image_size
    cfg.fallback_to_synthetic = False  # A reference number on synthetic data would mislead.
    info = data.prepare(cfg)
    splits = {s: info.root / s for s in ('train', 'validation', 'test')}
    print(f'seed {seed}: {info.description}; {info.num_examples}')
    run = run_recipe(splits['train'], splits['validation'],
                     splits['test'] if info.num_examples.get('test') else None, seed=seed,
                     variables=pretrained.variables, class_names=info.class_names,
                     image_size=args.image_size, batch_size=args.batch_size,
                     epochs=args.epochs, expected_files=manifest_files(info.root),
                     verbose=args.verbose)
    run['data'] = info.to_json()
    record['runs'].append(run)
    record['summary'] = summarize(record['runs'])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp')
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out)  # Written after every seed, so a long run reports progress.
    print(f'seed {seed}: final {run["final"]}, test {run["test"]}, '
          f'{statistics.fmean(run["epoch_seconds"]):.1f} s/epoch wall, '
          f'{statistics.fmean(run["epoch_cpu_seconds"]):.1f} s/epoch CPU')
  print(format_table(record['runs'], record['summary']))
  print(f'wrote {out}')
  return record


if __name__ == '__main__':
  main()
