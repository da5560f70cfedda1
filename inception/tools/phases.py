"""Runs a multi-phase recipe in one command: each phase a training run in `<workdir>/<name>`,
a later phase warm-started from an earlier one (`model.init_from`).

    python -m inception.tools.phases --config configs/dog_horse_finetune.py \
        --workdir workdirs/dog_horse_finetune [--arg seed=1]

The config module defines `get_phases(arg) -> [(name, config), ...]`; in a phase's
`model.init_from`, '{<name>}' stands for that earlier phase's workdir (e.g.
'{frozen}:best'). Rerunning the command resumes: a finished phase only reports, an
interrupted one resumes from its checkpoint. Returns each phase's summary; prints one line
per phase (its test metrics when the data has a test split).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import ml_collections

from inception import paths
from inception.tools import ablations
from inception.train import trainer


def load_phases(config_path: str, arg: str | None) -> list[tuple[str, ml_collections.ConfigDict]]:
  """The (name, config) list of a config file's `get_phases(arg)`; ValueError when the file
  has none, or when names repeat."""
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'--config {config_path} not found')
  module = ablations.load_config_module(config_path)
  if not hasattr(module, 'get_phases'):
    raise ValueError(f'--config {config_path} defines no get_phases(arg); a one-phase config '
                     'trains with python train.py --config ...')
  phases = list(module.get_phases(arg))
  names = [n for n, _ in phases]
  if len(set(names)) != len(names) or not names:
    raise ValueError(f'{config_path}: get_phases() names {names}; they must be unique')
  return phases


def run(phases: list[tuple[str, ml_collections.ConfigDict]], workdir: str | os.PathLike, *,
        log: Callable[[str], None] = print, progress_bars: bool = True) -> dict[str, dict]:
  """Trains the phases in order, each in `<workdir>/<name>`; {name: summary}."""
  root = paths.as_path(workdir)
  dirs = {}
  for name, config in phases:  # Every placeholder resolved before anything trains.
    spec = config.model.get('init_from', '')
    if spec:
      try:
        config.model.init_from = spec.format(**dirs)
      except KeyError as e:
        raise ValueError(f'phase {name}: model.init_from={spec!r} names {e}, which is not an '
                         f'earlier phase ({", ".join(dirs) or "none"})') from None
    dirs[name] = os.fspath(root / name)
  out = {}
  for name, config in phases:
    start = config.model.get('init_from', '')
    log(f'=== phase {name}: {dirs[name]}' + (f' (from {start})' if start else ''))
    out[name] = trainer.train(config, dirs[name], log=log, progress_bars=progress_bars)
  for name, summary in out.items():
    test = summary.get('test')
    log(f'phase {name}: ' + (f'test accuracy {test["accuracy"]:.4f} loss {test["loss"]:.4f}'
                             if test else f'validation accuracy '
                             f'{summary["final_validation"]["accuracy"]:.4f}'))
  return out


def main(argv: list[str] | None = None) -> int:
  # argparse, not absl: see train.py's docstring.
  p = argparse.ArgumentParser(prog='python -m inception.tools.phases',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--config', required=True, help='a config file with get_phases(arg)')
  p.add_argument('--arg', default=None, help="the config's argument, e.g. 'seed=1'")
  p.add_argument('--workdir', required=True, help='root of the phases\' workdirs')
  p.add_argument('--noprogress', action='store_true', help='no progress bars')
  a = p.parse_args(argv)
  try:
    run(load_phases(a.config, a.arg), a.workdir, progress_bars=not a.noprogress)
  except (ValueError, FileNotFoundError) as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
