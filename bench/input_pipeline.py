"""Input pipeline throughput, images/s, without the model.

    .venv/bin/python bench/input_pipeline.py [--batches 40] [--repeats 3] [--batch-size 20]

Uses the real photos in ../shared/data/animals10-standin (or $ANIMALS10_DIR) when present,
the synthetic data set otherwise (and says so). Measures training batches at 150 px with and
without augmentation, decoding every step (cache_decoded_mib=0) and from the in-memory decoded
cache (the default), plus one evaluation pass. Prints the best and median of `repeats` runs
(the machine is shared: the best is the least disturbed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import common  # bench/common.py; also puts the repo root on sys.path.
import data  # pylint: disable=g-bad-import-order
from data import config as config_lib
from data.sources import animals10


def _config(tmp: str) -> tuple:
  c = config_lib.get_config()
  c.dir = os.path.join(tmp, 'subset')
  cand = common.default_data_path()
  if cand and animals10.find_raw_img(cand):
    c.source, c.path = 'animals10', cand
    return c, f'real photos: {animals10.find_raw_img(cand)}'
  c.source = 'synthetic'
  c.synthetic.images_per_class = 500
  return c, 'SYNTHETIC data (no real photos found; set $ANIMALS10_DIR)'


def _rate(make_iter, batches: int, batch_size: int) -> float:
  it = make_iter()
  next(it)  # Graph building, first fill, decoded cache: not steady state.
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch_size / (time.perf_counter() - t)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--batches', type=int, default=40)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--batch-size', type=int, default=20)
  a = p.parse_args()
  print(common.environment(), flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    c, what = _config(tmp)
    print(f'Input pipeline benchmark on {what}; 150 px; '
          f'batch {a.batch_size}; {a.batches} batches x {a.repeats} repeats')
    info = data.prepare(c, log=lambda s: None)
    print(f'  {info.num_examples}')
    rows = []
    for aug in (True, False):
      for cache_mib in (0, 1024):
        cc = c.copy_and_resolve_references()
        cc.augment.enabled = aug
        cc.cache_decoded_mib = cache_mib
        rates = [_rate(lambda: data.train_batches(info, cc, batch_size=a.batch_size, seed=r),
                       a.batches, a.batch_size) for r in range(a.repeats)]
        rows.append((f'train augment={"on " if aug else "off"} '
                     f'{"decode every step" if not cache_mib else "decoded cache"}', rates))
    ce = c.copy_and_resolve_references()

    def eval_rate():
      n = info.num_examples['test']
      t = time.perf_counter()
      for _ in data.eval_batches(info, ce, split='test', batch_size=a.batch_size):
        pass
      return n / (time.perf_counter() - t)
    rows.append((f'eval pass (test split, {info.num_examples["test"]} images)',
                 [eval_rate() for _ in range(a.repeats)]))
    for name, rates in rows:
      print(f'  {name:42s} best {max(rates):7.1f} img/s   median {statistics.median(rates):7.1f}')


if __name__ == '__main__':
  main()
