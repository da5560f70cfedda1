"""Runs the quick benchmarks in turn with their defaults (`make bench`); ~15-20 minutes on 2 cores.

    .venv/bin/python bench/run_all.py [--only keras_vs_ours,xla_flags_sweep,...]

Each script prints its environment (CPUs, load average, versions) and its own figures; see
bench/README.md for what each one measures.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent
SCRIPTS = {
    'keras_vs_ours': [],
    'xla_flags_sweep': [],
    'input_pipeline': [],
    'scaling': [],
    'head_step': [],
    'gpu': ['--quick'],  # The full run needs an accelerator; --quick proves the script works.
}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--only', default=','.join(SCRIPTS))
  args = p.parse_args(argv)
  failed = []
  for name in args.only.split(','):
    if name not in SCRIPTS:
      raise SystemExit(f'--only: unknown benchmark {name!r}; valid: {", ".join(SCRIPTS)}')
    cmd = [sys.executable, str(BENCH / f'{name}.py')] + SCRIPTS[name]
    print(f'\n=== {" ".join(cmd[1:])}', flush=True)
    if subprocess.run(cmd).returncode:
      failed.append(name)
  if failed:
    print(f'FAILED: {", ".join(failed)}')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
