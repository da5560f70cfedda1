"""Runs ablation variants x seeds, each in its own workdir, and writes one results table.

    python -m inception.tools.ablations --config configs/ablations.py --workdir workdirs/ablations \\
        [--variants baseline,head_gap] [--seeds 0,1,2]

`--config` may carry extra args for every run (`configs/ablations.py:base=smoke,epochs=1`);
the runner adds `variant=...,seed=...`. A run whose workdir has summary.json is not redone:
its results are read back. Writes <workdir>/results.csv (one row per run) and results.md (the
same, then per variant the mean +- std over its seeds).

Several runners on one workdir root (one per machine, on a shared filesystem) split the
(variant, seed) runs without running one twice:
  --task_index=I --num_tasks=N   a static share: runs I, I+N, I+2N, ... of the list (what Slurm
                                 job arrays, $SLURM_ARRAY_TASK_ID, and Kubernetes indexed jobs,
                                 $JOB_COMPLETION_INDEX, hand each task)
  neither                        each runner claims a run by taking its workdir lock; a run
                                 another runner holds is left to it
Each runner then writes the tables of every run finished so far: the last one to finish writes
the complete table (and says how many runs are still missing otherwise).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from inception import paths
from inception.train import metrics

# test_macro_f1 ... test_brier: `metrics.headline` of summary['test']['metrics'] (blank for runs
# from before the trainer wrote it).
TEST_METRICS = ('test_macro_f1', 'test_balanced_accuracy', 'test_nll', 'test_ece', 'test_brier')
COLUMNS = ('variant', 'seed', 'best_val_accuracy', 'best_val_loss', 'final_val_accuracy',
           'final_val_loss', 'train_accuracy', 'train_loss', 'test_accuracy') + TEST_METRICS + (
               'epochs', 'wall_time_s', 'synthetic')


def load_config_module(path: str):
  """The module of a config file path."""
  spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f'--config {path} is not a Python file')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _row(variant: str, seed: int, summary: dict) -> dict:
  best = summary.get('best_validation') or {}
  test = summary.get('test') or {}
  headline = metrics.headline(test['metrics']) if test.get('metrics') else {}
  return {'variant': variant, 'seed': seed,
          'best_val_accuracy': best.get('accuracy'), 'best_val_loss': best.get('loss'),
          'final_val_accuracy': summary['final_validation']['accuracy'],
          'final_val_loss': summary['final_validation']['loss'],
          'train_accuracy': summary['final_train']['accuracy'],
          'train_loss': summary['final_train']['loss'],
          'test_accuracy': test.get('accuracy'),
          **{c: headline.get(c.removeprefix('test_')) for c in TEST_METRICS},
          'epochs': summary['epochs'],
          'wall_time_s': summary['wall_time_s'], 'synthetic': summary['synthetic']}


def _fmt(v, column: str = '') -> str:
  if v is None:
    return ''
  if column == 'wall_time_s':
    return f'{v:.0f}'
  if isinstance(v, float):
    return f'{v:.4f}'
  return str(v)


SUMMARY_COLUMNS = ('test_accuracy',) + TEST_METRICS + (
    'best_val_accuracy', 'final_val_accuracy', 'final_val_loss', 'train_accuracy', 'train_loss',
    'wall_time_s')


def summary_rows(rows: Sequence[dict]) -> list[dict]:
  """Per variant (in first-seen order): seeds and 'mean +- std' (sample std) of each
  SUMMARY_COLUMNS entry over its runs; a single run has no std."""
  by_variant: dict[str, list[dict]] = {}
  for r in rows:
    by_variant.setdefault(r['variant'], []).append(r)
  out = []
  for variant, runs in by_variant.items():
    row = {'variant': variant, 'seeds': ','.join(str(r['seed']) for r in runs)}
    for c in SUMMARY_COLUMNS:
      values = [r[c] for r in runs if r[c] is not None]
      if not values:
        row[c] = ''
        continue
      digits = 0 if c == 'wall_time_s' else 4
      row[c] = f'{statistics.mean(values):.{digits}f}'
      if len(values) > 1:
        row[c] += f' +- {statistics.stdev(values):.{digits}f}'
    out.append(row)
  return out


def _markdown(rows: Sequence[dict], columns: Sequence[str], fmt=_fmt) -> list[str]:
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  return lines + ['| ' + ' | '.join(fmt(r[c], c) for c in columns) + ' |' for r in rows]


def write_tables(rows: Sequence[dict], workdir: os.PathLike) -> None:
  """results.csv and results.md of `rows` (each replaced atomically: runners may race)."""
  table = io.StringIO(newline='')
  w = csv.DictWriter(table, fieldnames=COLUMNS)
  w.writeheader()
  w.writerows(rows)
  paths.write_text(workdir / 'results.csv', table.getvalue())
  lines = _markdown(rows, COLUMNS)
  lines += ['', 'Mean +- std over seeds:', '']
  lines += _markdown(summary_rows(rows), ('variant', 'seeds') + SUMMARY_COLUMNS,
                     fmt=lambda v, _: str(v))
  if any(r['synthetic'] for r in rows):
    lines.insert(0, '**SYNTHETIC DATA in some runs (synthetic=True): not Animals-10.**\n')
  paths.write_text(workdir / 'results.md', '\n'.join(lines) + '\n')


def share(runs: Sequence[tuple[str, int]], task_index: int | None, num_tasks: int | None
          ) -> list[tuple[str, int]]:
  """This task's runs: every num_tasks-th from task_index, or all of them (claimed one by one)
  when neither is given."""
  if (task_index is None) != (num_tasks is None):
    raise ValueError('--task_index and --num_tasks go together (or neither: claim runs)')
  if num_tasks is None:
    return list(runs)
  if num_tasks < 1 or not 0 <= task_index < num_tasks:
    raise ValueError(f'--task_index={task_index} must be in [0, --num_tasks={num_tasks})')
  return list(runs)[task_index::num_tasks]


def run(config_path: str, workdir: str | os.PathLike, *, variants: Sequence[str] | None = None,
        seeds: Sequence[int] = (0,), task_index: int | None = None,
        num_tasks: int | None = None, log: Callable[[str], None] = print,
        progress_bars: bool = True) -> list[dict]:
  """Trains this runner's share of the (variant, seed) runs not yet finished (see the module
  doc); writes and returns the rows of every run finished so far, in list order."""
  from inception.train import checkpoints, trainer  # pylint: disable=g-import-not-at-top
  path, _, extra = config_path.partition(':')
  module = load_config_module(path)
  all_variants = module.get_variants()
  variants = list(variants or all_variants)
  unknown = [v for v in variants if v not in all_variants]
  if unknown:
    raise ValueError(f'--variants {unknown} unknown; valid: {", ".join(all_variants)}')
  runs = [(v, s) for v in variants for s in seeds]
  mine = share(runs, task_index, num_tasks)
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  summary_of = lambda v, s: workdir / f'{v}_seed{s}' / 'summary.json'
  for variant, seed in mine:
    run_dir = summary_of(variant, seed).parent
    if summary_of(variant, seed).exists():
      log(f'[ablations] {variant} seed {seed}: finished earlier, reading {run_dir}')
      continue
    try:
      lock = checkpoints.WorkdirLock(run_dir).acquire()
    except RuntimeError:
      log(f'[ablations] {variant} seed {seed}: another runner holds {run_dir}; left to it')
      continue
    try:
      if summary_of(variant, seed).exists():  # Finished by another runner meanwhile.
        continue
      arg = ','.join(x for x in (f'variant={variant}', f'seed={seed}', extra) if x)
      log(f'[ablations] {variant} seed {seed}: training in {run_dir} ({path}:{arg})')
      t = time.time()
      trainer.train(module.get_config(arg), run_dir, log=log, progress_bars=progress_bars,
                    lock=lock)
      log(f'[ablations] {variant} seed {seed}: done in {time.time() - t:.0f} s')
    finally:
      lock.release()
    write_tables(_finished_rows(runs, summary_of), workdir)  # Survives an interruption.
  rows = _finished_rows(runs, summary_of)
  write_tables(rows, workdir)
  missing = len(runs) - len(rows)
  log((workdir / 'results.md').read_text() + (
      f'\n[ablations] {missing} of {len(runs)} runs not finished yet (other runners, or '
      'interrupted): rerun any runner to complete them and the table.' if missing else ''))
  return rows


def _finished_rows(runs, summary_of) -> list[dict]:
  rows = []
  for variant, seed in runs:
    done = summary_of(variant, seed)
    if done.exists():
      rows.append(_row(variant, seed, json.loads(done.read_text())))
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  # argparse, not absl: see train.py's docstring.
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/ablations.py')
  p.add_argument('--workdir', default='workdirs/ablations')
  p.add_argument('--variants', default='', help='comma-separated names (default: all)')
  p.add_argument('--seeds', default='0', help='comma-separated ints')
  p.add_argument('--task_index', type=int, default=None,
                 help='this task\'s index for a static share of the runs (with --num_tasks)')
  p.add_argument('--num_tasks', type=int, default=None, help='number of tasks sharing the runs')
  p.add_argument('--noprogress', action='store_true')
  a = p.parse_args(argv)
  try:
    seeds = [int(s) for s in a.seeds.split(',') if s.strip()]
  except ValueError:
    p.error(f'--seeds={a.seeds!r} must be comma-separated integers')
  variants = [v.strip() for v in a.variants.split(',') if v.strip()] or None
  try:
    run(a.config, a.workdir, variants=variants, seeds=seeds, task_index=a.task_index,
        num_tasks=a.num_tasks, progress_bars=not a.noprogress)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
