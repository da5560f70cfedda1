"""Our seed-recipe runs next to Keras' (bench/keras_seed_recipe.py) and the notebook: table, curves.

    python bench/seed_recipe_report.py --ours runs/dog_horse_seed0 runs/dog_horse_seed1 ... \\
        [--keras runs/keras_seed_recipe.json] [--plot docs/seed_recipe_curves.png] \\
        [--title 'seed recipe']

Reads each workdir's summary.json and metrics.jsonl (last-epoch train/validation metrics, test
metrics, wall time) and the Keras JSON's per-seed histories; prints a markdown table (per seed,
mean +- std, the notebook's reported numbers) and, per metric, the difference of the means
against the seed-to-seed spread, sqrt(std_ours^2 + std_keras^2). The plot shows accuracy and
loss per epoch, train and validation, as the mean over seeds with a +-std band.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import common  # pylint: disable=unused-import  # Puts the repo root on sys.path.
from inception.train import reporting  # pylint: disable=g-bad-import-order
from tests.reference import keras_recipe  # pylint: disable=g-bad-import-order

# The notebook's reported last-epoch numbers, under this table's column names.
NOTEBOOK = {'train_accuracy': keras_recipe.SEED_REPORTED['accuracy'],
            'val_accuracy': keras_recipe.SEED_REPORTED['val_accuracy'],
            'train_loss': keras_recipe.SEED_REPORTED['loss'],
            'val_loss': keras_recipe.SEED_REPORTED['val_loss']}
COLUMNS = ('train_accuracy', 'val_accuracy', 'train_loss', 'val_loss', 'test_accuracy',
           'test_loss', 'wall_s')


def ours_run(workdir: Path) -> dict:
  """Last-epoch metrics, test metrics, per-epoch curves and wall time of one of our runs."""
  summary = json.loads((workdir / 'summary.json').read_text())
  hist = reporting.epoch_history(reporting.read_metrics(workdir))
  epochs = sorted(hist['train'])
  curves = {'accuracy': [hist['train'][e]['accuracy'] for e in epochs],
            'loss': [hist['train'][e]['loss'] for e in epochs],
            'val_accuracy': [hist['validation'][e]['accuracy'] for e in epochs],
            'val_loss': [hist['validation'][e]['loss'] for e in epochs]}
  test = summary.get('test') or {}
  return {'name': workdir.name, 'curves': curves,
          'train_accuracy': curves['accuracy'][-1], 'val_accuracy': curves['val_accuracy'][-1],
          'train_loss': curves['loss'][-1], 'val_loss': curves['val_loss'][-1],
          'test_accuracy': test.get('accuracy', math.nan), 'test_loss': test.get('loss', math.nan),
          'wall_s': summary['wall_time_s']}


def keras_runs(path: Path) -> list[dict]:
  """The same fields from bench/keras_seed_recipe.py's JSON."""
  out = []
  for r in json.loads(path.read_text())['runs']:
    h, test = r['history'], r.get('test') or {}
    out.append({'name': f'keras seed {r["seed"]}', 'curves': h,
                'train_accuracy': h['accuracy'][-1], 'val_accuracy': h['val_accuracy'][-1],
                'train_loss': h['loss'][-1], 'val_loss': h['val_loss'][-1],
                'test_accuracy': test.get('accuracy', math.nan),
                'test_loss': test.get('loss', math.nan),
                'wall_s': r['fit_seconds'] + r.get('test_seconds', 0.0)})
  return out


def mean_std(runs: list[dict], key: str) -> tuple[float, float]:
  values = [r[key] for r in runs]
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(groups: dict[str, list[dict]]) -> str:
  """Markdown: per-run rows, then mean +- std per group, then the notebook."""
  head = ['run', 'train acc', 'val acc', 'train loss', 'val loss', 'test acc', 'test loss',
          'wall s']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  fmt = lambda k, v: f'{v:.0f}' if k == 'wall_s' else f'{v:.4f}'
  for label, runs in groups.items():
    for r in runs:
      lines.append(f'| {label}: {r["name"]} | ' + ' | '.join(fmt(k, r[k]) for k in COLUMNS) +
                   ' |')
  for label, runs in groups.items():
    cells = []
    for k in COLUMNS:
      m, s = mean_std(runs, k)
      cells.append(f'{m:.0f} ± {s:.0f}' if k == 'wall_s' else f'**{m:.4f}** ± {s:.4f}')
    lines.append(f'| **{label}, mean ± std of {len(runs)}** | ' + ' | '.join(cells) + ' |')
  lines.append('| seed notebook (reported) | ' + ' | '.join(
      f'{NOTEBOOK[k]:.4f}' if k in NOTEBOOK else '-' for k in COLUMNS) + ' |')
  return '\n'.join(lines)


def agreement(ours: list[dict], keras: list[dict]) -> str:
  """Per metric: mean difference vs sqrt(std_ours^2 + std_keras^2), the seed-to-seed spread."""
  lines = ['| metric | ours - Keras | spread | within |', '|---|---|---|---|']
  for k in COLUMNS[:-1]:
    (mo, so), (mk, sk) = mean_std(ours, k), mean_std(keras, k)
    spread = math.hypot(so, sk)
    lines.append(f'| {k} | {mo - mk:+.4f} | {spread:.4f} | '
                 f'{"yes" if abs(mo - mk) <= spread else "NO"} |')
  return '\n'.join(lines)


def plot(groups: dict[str, list[dict]], path: Path, title: str) -> None:
  """Accuracy and loss per epoch: mean over seeds with a +-std band, per group and split."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for ax, metric in zip(axes, ('accuracy', 'loss')):
    for (label, runs), color in zip(groups.items(), ('C0', 'C3', 'C2')):
      for key, style in ((metric, '-'), (f'val_{metric}', '--')):
        y = np.array([r['curves'][key] for r in runs])
        x = np.arange(1, y.shape[1] + 1)
        m, s = y.mean(0), y.std(0)
        ax.plot(x, m, style, color=color,
                label=f'{label} {"validation" if key.startswith("val") else "train"}')
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.12)
    ax.set_xlabel('epoch')
    ax.set_title(metric)
    ax.grid(alpha=0.3)
  axes[1].set_yscale('log')
  axes[0].legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--ours', nargs='+', required=True, type=Path, help='our run workdirs')
  p.add_argument('--label', default='ours')
  p.add_argument('--keras', type=Path, help="bench/keras_seed_recipe.py's JSON")
  p.add_argument('--plot', type=Path)
  p.add_argument('--title', default='seed recipe, dog vs horse (real photos)')
  args = p.parse_args(argv)
  groups = {args.label: [ours_run(w) for w in args.ours]}
  if args.keras:
    groups['Keras'] = keras_runs(args.keras)
  print(table(groups))
  if args.keras:
    print()
    print(agreement(groups[args.label], groups['Keras']))
  if args.plot:
    plot(groups, args.plot, args.title)
    print(f'\nwrote {args.plot}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
