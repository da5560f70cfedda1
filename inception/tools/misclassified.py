"""The misclassified images of a split: a CSV and a contact sheet, for looking at the errors.

    python -m inception.tools.misclassified --workdir W [--split test] [--checkpoint latest] \\
        [--max-images 48]

The run is rebuilt from its workdir (`inception.tools.evaluate.restore`). Predicts every file of the
split as the run's manifest lists it (`<subset root>/<split>/<class>/*`, each checked against its
recorded sha256) with the checkpoint, and writes
`<workdir>/misclassified_<split>.csv` (path, true class, predicted class, probability of the
prediction; most confident errors first) and `<workdir>/misclassified_<split>.png` (thumbnails
with true -> predicted and the probability).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path
from typing import Callable, Sequence

from inception import paths


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


def contact_sheet(errors: Sequence[dict], path: str | os.PathLike, *, max_images: int = 48,
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
  paths.save_figure(fig, path, dpi=80)
  plt.close(fig)


def run(workdir: str | os.PathLike, *, split: str = 'test', checkpoint: str = 'latest',
        max_images: int = 48, log: Callable[[str], None] = print) -> list[dict]:
  """Predicts `split` of the run's subset; writes the CSV and PNG; returns the errors."""
  from data import restructure  # pylint: disable=g-import-not-at-top
  from inception.tools import predict  # pylint: disable=g-import-not-at-top
  from inception.train import run_record  # pylint: disable=g-import-not-at-top
  workdir = paths.as_path(workdir)
  record = run_record.load(workdir)
  root = Path(record.data['root'])
  images, _ = restructure.verified_split(root, record.manifest(), split)
  if not images:
    raise ValueError(f'The run\'s {split!r} split is empty ({record.data["num_examples"]})')
  rows = predict.predict(workdir, images, checkpoint=checkpoint, log=lambda _: None)
  errors = find(rows, root / split)
  stem = workdir / f'misclassified_{split}'
  table = io.StringIO(newline='')
  w = csv.DictWriter(table, fieldnames=['path', 'true', 'predicted', 'probability'])
  w.writeheader()
  w.writerows(errors)
  paths.write_text(f'{stem}.csv', table.getvalue())
  contact_sheet(errors, f'{stem}.png', max_images=max_images)
  log(f'{len(errors)} of {len(rows)} {split} images misclassified; wrote {stem}.csv and '
      f'{stem}.png')
  return errors


def main(argv: Sequence[str] | None = None) -> int:
  # argparse, not absl: see train.py's docstring.
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--workdir', required=True, help='a trained run\'s workdir')
  p.add_argument('--split', default='test', choices=['validation', 'test', 'train'])
  p.add_argument('--checkpoint', default='latest', help='latest | best | STEP')
  p.add_argument('--max-images', type=int, default=48)
  args = p.parse_args(argv)
  run(args.workdir, split=args.split, checkpoint=args.checkpoint, max_images=args.max_images)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
