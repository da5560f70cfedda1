"""Feature cache at data-set scale: peak memory and times against the number of images N.

    nice -n 10 .venv/bin/python bench/feature_cache_scale.py [--runs 2000:float32,...] \
        [--batch 20] [--dir DIR]

Each run (N images, storage dtype) goes in a fresh subprocess, so its peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) is its own. The subprocess drives the real
`CachedFeatures` of `inception/train/feature_cache/source.py` -- its store's streaming
writer, sha256 verification, memory-mapped reads and `train_batches` -- at the seed recipe's cut and the
Animals-10 resolution (mixed7 at 299 px: rows [17, 17, 768], or pooled [768] for a 'gap'
head), but it does NOT run the backbone: the feature values are synthetic (one random
float32 block [64, 17, 17, 768] plus the block's index), so a run takes seconds to minutes
instead of hours on a small CPU. A fake manifest of N file names stands in for the data set
(no image is read). Per run it reports:

  write   seconds to stream N rows to disk (encode to the storage dtype, write, sha256, fsync,
          rename, sidecar), as `store.Store.write` does after the forward passes;
  load    seconds to verify the file's sha256 (streamed) and memory-map it, as a later run does;
  epoch   seconds to serve one training epoch (N // batch batches of float32 rows in the
          per-(seed, epoch) order of `data.pipeline.train_batches`) from the mapping;
  RSS     the process's peak resident set, and its resident set after the imports (baseline).

The files go to a temporary folder in --dir (default: the system's temporary directory),
deleted after each run. Disk: N x 888 KB in float32, half that in float16/bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import common  # bench/common.py; also puts the repo root on sys.path.

ROW = (17, 17, 768)  # mixed7 at 299 px
DEFAULT_RUNS = ('2000:float32,10000:float32,2000:float16,10000:float16,30000:float16,'
                '30000:float32:gap')


def rss_mib() -> float:
  """The current resident set (Linux /proc), MiB."""
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def child(n: int, storage: str, head: str, batch: int, directory: pathlib.Path) -> dict:
  """One run in this (fresh) process; returns its figures."""
  common.quiet_tensorflow()
  import types  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from data import restructure  # pylint: disable=g-import-not-at-top
  from inception import transfer  # pylint: disable=g-import-not-at-top
  from inception.train import sharding  # pylint: disable=g-import-not-at-top
  from inception.train.feature_cache import source  # pylint: disable=g-import-not-at-top
  from inception.train.feature_cache import store  # pylint: disable=g-import-not-at-top

  c = default.get_config()
  c.data.image_size, c.model.cut, c.model.head = 299, 'mixed7', head
  c.train.feature_cache_dtype = storage
  c.train.batch_size, c.seed = batch, 0
  root = directory / 'data'
  root.mkdir(parents=True)
  (root / restructure.MANIFEST).write_text(json.dumps({'splits': {'train': [
      {'path': f'x/{i}.jpg', 'label': i % 2} for i in range(n)]}}))
  info = types.SimpleNamespace(root=root, manifest_sha256=f'bench-{n}',
                               num_examples={'train': n})
  fc = source.CachedFeatures(c, transfer.from_config(c, 2), {}, info, {}, sharding.make_mesh(),
                             directory=directory / 'features', log=lambda _: None)
  base = np.random.default_rng(0).standard_normal((64,) + ROW, np.float32)
  if fc.pooled:
    base = base.mean(axis=(1, 2))

  def blocks():  # What `CachedFeatures` computes, without the backbone.
    buf = np.empty_like(base)
    for i, lo in enumerate(range(0, n, len(base))):
      rows = np.add(base, np.float32(i), out=buf)[:n - lo]
      yield store.encode(rows, storage)

  baseline = rss_mib()
  t0 = time.perf_counter()
  fc.store.write('train', n, blocks(), fc.ingredients, log=lambda _: None)
  t1 = time.perf_counter()
  fc.clear_memory()
  feats, labels = fc.features('train')  # Verifies the sha256, maps the file.
  t2 = time.perf_counter()
  size = fc.store.paths('train')[0].stat().st_size
  steps, total = n // batch, 0.0
  it = fc.train_batches()
  t3 = time.perf_counter()
  for _ in range(steps):
    b = next(it)
    total += float(b['image'][:, 0].sum())  # Served float32 rows, used.
    assert b['image'].dtype == np.float32 and len(b['label']) == batch
  t4 = time.perf_counter()
  assert feats.shape == (n,) + base.shape[1:] and len(labels) == n
  return {'n': n, 'storage': storage, 'head': head, 'file_gb': size / 1e9,
          'write_s': t1 - t0, 'load_s': t2 - t1, 'epoch_s': t4 - t3, 'steps': steps,
          'baseline_mib': baseline,
          'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--runs', default=DEFAULT_RUNS,
                 help='comma-separated N:storage[:head] (head flatten by default)')
  p.add_argument('--batch', type=int, default=20, help='global training batch')
  p.add_argument('--dir', default=None, help='where the files go (deleted after each run)')
  p.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    n, storage, head, directory = args.child.split(':', 3)
    print(json.dumps(child(int(n), storage, head, args.batch, pathlib.Path(directory))))
    return
  print(common.environment(), flush=True)
  rows = []
  for spec in args.runs.split(','):
    n, storage, *rest = spec.split(':')
    head = rest[0] if rest else 'flatten'
    directory = pathlib.Path(tempfile.mkdtemp(prefix='feature_cache_scale.', dir=args.dir))
    try:
      out = subprocess.run([sys.executable, __file__, '--batch', str(args.batch), '--child',
                            f'{n}:{storage}:{head}:{directory}'], check=True,
                           capture_output=True, text=True, cwd=common.REPO_ROOT)
    except subprocess.CalledProcessError as e:
      print(e.stdout[-2000:], e.stderr[-4000:], file=sys.stderr)
      raise
    finally:
      shutil.rmtree(directory, ignore_errors=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append(r)
    print(f'N={r["n"]} {r["storage"]} {r["head"]}: file {r["file_gb"]:.2f} GB, write '
          f'{r["write_s"]:.1f} s, load {r["load_s"]:.1f} s, epoch ({r["steps"]} steps) '
          f'{r["epoch_s"]:.1f} s, peak RSS {r["peak_mib"]:.0f} MiB (after imports '
          f'{r["baseline_mib"]:.0f})', flush=True)
  print('\n| N | head | stored | file GB | write s | verify + map s | epoch s | epoch images/s '
        '| peak RSS MiB | RSS after imports MiB |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["n"]} | {r["head"]} | {r["storage"]} | {r["file_gb"]:.2f} | '
          f'{r["write_s"]:.1f} | {r["load_s"]:.1f} | {r["epoch_s"]:.1f} | '
          f'{r["steps"] * args.batch / r["epoch_s"]:.0f} | {r["peak_mib"]:.0f} | '
          f'{r["baseline_mib"]:.0f} |')


if __name__ == '__main__':
  main()
