"""The misclassified images of a split: a CSV and a contact sheet, for looking at the errors.

    python -m inception.misclassified --config configs/dog_horse.py --workdir W \\
        [--split test] [--checkpoint latest] [--max-images 48]

The config is `--config` updated with the run's recorded `<workdir>/config.json` (so overrides
given to train.py apply). Predicts every file of `<subset root>/<split>/<class>/*` (the root
recorded in `<workdir>/data_info.json` by training) with the checkpoint, and writes
`<workdir>/misclassified_<split>.csv` (path, true class, predicted class, probability of the
prediction; most confident errors first) and `<workdir>/misclassified_<split>.png` (thumbnails
with true -> predicted and the probability).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Callable, Sequence


def find(rows: Sequence[dict], split_dir: Path) -> list[dict]:
  """Rows of `predict.predict` whose class differs from their `<split_dir>/<class>/` folder.

  Returns [{'path', 'true', 'predicted', 'probability'}], most confident errors first.
  """
  errors = []
  for r in rows:
    true = Path(r['path']).relative_to(split_dir).parts[0]
    if r['class'] != true:
      errors.append({'path': r['path'], 'true': true, 'predicted': r['class'],
                     'probability': r['probability']})
  return sorted(errors, key=lambda e: -e['probability'])


def contact_sheet(errors: Sequence[dict], path: str | Path, *, max_images: int = 48,
                  columns: int = 8, thumb_px: int = 150) -> None:
  """Writes a PNG grid of the first `max_images` errors, each titled 'true -> pred (p)'."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  shown = list(errors)[:max_images]
  rows = max(1, -(-len(shown) // columns))
  fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
  for ax in axes.ravel():
    ax.axis('off')
  for ax, e in zip(axes.ravel(), shown):
    with Image.open(e['path']) as im:
      im = im.convert('RGB')
      im.thumbnail((thumb_px, thumb_px))
      ax.imshow(im)
    ax.set_title(f'{e["true"]} -> {e["predicted"]}\n{e["probability"]:.2f}', fontsize=7)
  fig.suptitle(f'{len(errors)} misclassified ({len(shown)} shown)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def run(config, workdir: str | Path, *, split: str = 'test', checkpoint: str = 'latest',
        max_images: int = 48, log: Callable[[str], None] = print) -> list[dict]:
  """Predicts `split` of the run's subset; writes the CSV and PNG; returns the errors."""
  from inception import predict  # pylint: disable=g-import-not-at-top
  workdir = Path(workdir)
  info_path = workdir / 'data_info.json'
  if not info_path.exists():
    raise FileNotFoundError(f'{info_path} not found: --workdir must be a trained run')
  split_dir = Path(json.loads(info_path.read_text())['root']) / split
  if not split_dir.is_dir():
    raise FileNotFoundError(f'No {split!r} split at {split_dir} (from {info_path})')
  rows = predict.predict(config, workdir, [str(split_dir)], checkpoint=checkpoint,
                         log=lambda _: None)
  errors = find(rows, split_dir)
  stem = workdir / f'misclassified_{split}'
  with open(f'{stem}.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=['path', 'true', 'predicted', 'probability'])
    w.writeheader()
    w.writerows(errors)
  contact_sheet(errors, f'{stem}.png', max_images=max_images)
  log(f'{len(errors)} of {len(rows)} {split} images misclassified; wrote {stem}.csv and '
      f'{stem}.png')
  return errors


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--config', required=True, help='config file, optionally path.py:arg')
  p.add_argument('--workdir', required=True)
  p.add_argument('--split', default='test', choices=['validation', 'test', 'train'])
  p.add_argument('--checkpoint', default='latest', help='latest | best | STEP')
  p.add_argument('--max-images', type=int, default=48)
  args = p.parse_args(argv)
  from inception import ablations  # pylint: disable=g-import-not-at-top
  path, _, arg = args.config.partition(':')
  config = ablations.load_config_module(path).get_config(arg or None)
  recorded = Path(args.workdir) / 'config.json'
  if recorded.exists():  # The run's own values, command-line overrides included.
    config.update(json.loads(recorded.read_text()))
  run(config, args.workdir, split=args.split, checkpoint=args.checkpoint,
      max_images=args.max_images)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
