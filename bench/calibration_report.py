"""Temperature scaling on trained runs: fit on validation (`--mode=calibrate`), then the test
split before and after, as a markdown table (the docs/results.md calibration section).

    python bench/calibration_report.py --checkpoint latest runs/dog_horse_seed{0,1,2}

Each workdir is calibrated for `--checkpoint` (calibration.json is written, as by
`python train.py --workdir W --mode=calibrate`) and evaluated on its test split (eval/*.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from inception.tools import calibrate
from inception.tools import evaluate


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--checkpoint', default='latest')
  args = parser.parse_args(argv)
  quiet = lambda _: None
  rows = []
  for wd in args.workdirs:
    entry = calibrate.calibrate(wd, checkpoint=args.checkpoint, log=quiet)
    out = evaluate.evaluate(wd, checkpoint=args.checkpoint, split='test', log=quiet)
    b, a = out['calibration']['before'], out['calibration']['after']
    rows.append({'run': wd, 'T': entry['temperature'], 'val_nll_before': entry['nll_before'],
                 'val_nll_after': entry['nll_after'], 'test_acc': a['accuracy'],
                 'test_nll_before': b['nll'], 'test_nll_after': a['nll'],
                 'test_ece_before': b['ece'], 'test_ece_after': a['ece'],
                 'test_brier_before': b['brier'], 'test_brier_after': a['brier'],
                 'step': out['step']})
  cols = list(rows[0])
  print('| ' + ' | '.join(cols) + ' |')
  print('|' + '---|' * len(cols))
  fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else str(v)
  for r in rows:
    print('| ' + ' | '.join(fmt(r[c]) for c in cols) + ' |')
  if len(rows) > 1:
    cells = []
    for c in cols:
      vals = [r[c] for r in rows]
      cells.append(f'{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}'
                   if isinstance(vals[0], float) else ('mean ± std' if c == 'run' else ''))
    print('| ' + ' | '.join(cells) + ' |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
