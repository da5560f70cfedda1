"""The seed recipe in Keras 2 over seeds, on our splits: the reference of the results.

    .venv/bin/python bench/keras_seed_recipe.py --seeds 0,1,2 [--epochs 10] \\
        [--images-per-class 500] [--out results/keras_seed_recipe.json] [--threads 2]

Runs `tests/reference/keras_recipe.py`'s `run_recipe` (the seed notebook's recipe in tf_keras)
once per seed s: the data split uses `split_seed=s` (`data.prepare`, so Keras reads exactly the
files our Flax runs use, checked against the manifest), `tf_keras.utils.set_random_seed(s)`
seeds python/numpy/TF, and the training flow shuffles with seed s. The backbone holds
`--weights` (the project's converted tf2015 by default), as our runs do.

Writes a JSON (per-epoch history, final train/validation/test metrics, wall times,
environment; rewritten after every seed) and prints a per-seed table with mean +- std next to
the seed notebook's numbers. `bench/seed_recipe_report.py` sets it next to our runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

import common  # bench/common.py; also puts the repo root on sys.path.
from tests.reference import keras_models  # pylint: disable=g-bad-import-order
from tests.reference import keras_recipe  # pylint: disable=g-bad-import-order


def environment(threads: int) -> dict[str, Any]:
  """Versions and machine facts recorded with the results (`common.environment_facts`)."""
  return {**common.environment_facts(), **common.versions(('scipy', 'pillow')),
          'tf_threads': threads}


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
      'augmentation': keras_models.TRAIN_AUGMENTATION,
      'seed_reported': keras_recipe.SEED_REPORTED,
      'environment': environment(args.threads), 'runs': [],
  }
  for seed in args.seeds:
    cfg = data.config.get_config()
    cfg.path = args.data_path if args.data_path is not None else common.default_data_path()
    cfg.images_per_class = args.images_per_class
    cfg.split_seed = seed
    cfg.image_size = args.image_size
    cfg.fallback_to_synthetic = False  # A reference number on synthetic data would mislead.
    info = data.prepare(cfg)
    splits = {s: info.root / s for s in ('train', 'validation', 'test')}
    print(f'seed {seed}: {info.description}; {info.num_examples}')
    run = keras_recipe.run_recipe(
        splits['train'], splits['validation'],
        splits['test'] if info.num_examples.get('test') else None, seed=seed,
        variables=pretrained.variables, class_names=info.class_names,
        image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs,
        expected_files=keras_recipe.manifest_files(info.root), verbose=args.verbose)
    run['data'] = info.to_json()
    record['runs'].append(run)
    record['summary'] = keras_recipe.summarize(record['runs'])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp')
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out)  # Written after every seed, so a long run reports progress.
    print(f'seed {seed}: final {run["final"]}, test {run["test"]}, '
          f'{statistics.fmean(run["epoch_seconds"]):.1f} s/epoch wall, '
          f'{statistics.fmean(run["epoch_cpu_seconds"]):.1f} s/epoch CPU')
  print(keras_recipe.format_table(record['runs'], record['summary']))
  print(f'wrote {out}')
  return record


if __name__ == '__main__':
  main()
