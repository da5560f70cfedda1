"""CLI: builds the `animals10` TFDS data set from a manual download.

    python -m data.tfds_build --manual_dir /path/to/animals10 [--data_dir DIR]

The same as `tfds build animals10 --imports data.sources.tfds_animals10 --manual_dir ...`, which
needs apache-beam installed (the tfds CLI imports it). A separate module so that the builder
class is defined in `data.sources.tfds_animals10`, never in `__main__`.
"""

from __future__ import annotations

import argparse
import sys

from data.sources import tfds_animals10


def main(argv: list[str] | None = None) -> int:
  # argparse, not absl: see train.py's docstring.
  p = argparse.ArgumentParser(prog='python -m data.tfds_build', description=__doc__)
  p.add_argument('--manual_dir', required=True, help='folder holding raw-img/ (or raw-img)')
  p.add_argument('--data_dir', default='', help='TFDS data dir (default <cache>/tfds)')
  a = p.parse_args(argv)
  builder = tfds_animals10.build(a.manual_dir, a.data_dir or None)
  print(f'Built {builder.name} {builder.version} in {builder.data_dir}: '
        f'{builder.info.splits["train"].num_examples} examples')
  return 0


if __name__ == '__main__':
  sys.exit(main())
