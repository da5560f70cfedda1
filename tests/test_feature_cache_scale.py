"""Feature cache with several processes (jax.distributed on CPU, 2 local processes sharing one
cache directory): they agree on load vs compute, only process 0 writes, every process reads
the file batch by batch, and the features equal a single-process computation."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
PROCESSES = 2

# One process of the job. argv: process id, coordinator port, cache dir, output dir.
WORKER = r'''
import json, pathlib, sys
import jax
pid, port, cache_dir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
jax.distributed.initialize(f'localhost:{port}', %(n)d, pid)
from jax.experimental import multihost_utils
import numpy as np
sys.path.insert(0, %(tests)r)
import test_feature_cache as t
logs = []
s, fc = t._cache_for(t._config('on'), pathlib.Path(cache_dir), logs)
st = lambda: [fc.forward_batches, fc.store.files_written]
record = {'key': fc.key}
feats, labels = fc.features('validation')  # 1: nobody has it: all compute, process 0 writes.
record['computed'] = st()
first = np.array(feats)
train = next(fc.train_batches())  # This process's share of the global batch of 8.
val = list(fc.eval_batches('validation'))
record['with_train'] = st()  # train computed too
fc.clear_memory()  # 2: everyone finds the file valid: all load.
logs.clear()
again, _ = fc.features('validation')
record['loaded'] = st() + [any(l.startswith('Feature cache: loaded validation') for l in logs)]
record['reload_equal'] = bool(np.array_equal(again, first))
multihost_utils.sync_global_devices('damage')
if pid == 0:  # 3: process 0's copy goes bad (in place), process 1 still holds its mapping.
  fc.clear_memory()
  with open(fc.store.paths('validation')[0], 'r+b') as f:
    f.seek(-1, 2)
    b = f.read(1)
    f.seek(-1, 2)
    f.write(bytes([b[0] ^ 0xFF]))
multihost_utils.sync_global_devices('damaged')
logs.clear()
third, _ = fc.features('validation')
record['disagreed'] = st() + [any('another process has no valid copy' in l for l in logs),
                       any('is corrupt or incomplete' in l for l in logs)]
record['recomputed_equal'] = bool(np.array_equal(third, first))
np.savez(out / f'{pid}.npz', feats=first, train_feats=fc.features('train')[0],
         train=train['image'], train_label=train['label'],
         val=np.concatenate([b['image'] for b in val]),
         val_mask=np.concatenate([b['mask'] for b in val]))
(out / f'{pid}.json').write_text(json.dumps(record))
'''


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('localhost', 0))
    return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_write_once_and_read_their_share(tmp_path):
  import test_feature_cache as t  # pylint: disable=g-import-not-at-top
  features_dir, out = tmp_path / 'features', tmp_path / 'out'
  out.mkdir()
  # The data and weights cache, shared with the workers: the synthetic set is made once here.
  env = dict(os.environ, INCEPTION_FLAX_CACHE=str(tmp_path / 'cache'), JAX_PLATFORMS='cpu',
             TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(REPO))
  os.environ['INCEPTION_FLAX_CACHE'] = env['INCEPTION_FLAX_CACHE']
  try:
    _, fc = t._cache_for(t._config('on'), tmp_path / 'single')
    want, labels = fc.features('validation')
    want = np.array(want)
    want_train = next(fc.train_batches())
  finally:
    del os.environ['INCEPTION_FLAX_CACHE']
  port = str(_free_port())
  script = WORKER % {'n': PROCESSES, 'tests': str(REPO / 'tests')}
  procs = [subprocess.Popen([sys.executable, '-c', script, str(i), port, str(features_dir),
                             str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(PROCESSES)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, o in zip(procs, outputs):
    assert p.returncode == 0, o[-3000:]
  rec = [json.loads((out / f'{i}.json').read_text()) for i in range(PROCESSES)]
  res = [np.load(out / f'{i}.npz') for i in range(PROCESSES)]
  assert rec[0]['key'] == rec[1]['key'] == fc.key
  files = sorted(p.name for p in (features_dir / fc.key).iterdir())
  # No temporary file left.
  assert files == ['train.json', 'train.npy', 'validation.json', 'validation.npy'], files
  batches = -(-len(labels) // 8)  # Global eval batches of 8.
  for i in range(PROCESSES):
    # Every process ran every (collective) forward; only process 0 wrote.
    assert rec[i]['computed'] == [batches, 1 if i == 0 else 0], rec[i]
    with_train = rec[i]['with_train']
    assert with_train[1] == 2 * rec[i]['computed'][1], rec[i]
    assert rec[i]['loaded'] == with_train + [True], rec[i]
    assert rec[i]['reload_equal'] and rec[i]['recomputed_equal'], rec[i]
    forward, written, told, corrupt = rec[i]['disagreed']
    assert forward == with_train[0] + batches, rec[i]
    assert written == with_train[1] + (1 if i == 0 else 0), rec[i]
    assert told == (i == 1) and corrupt == (i == 0), rec[i]
  # One file for all: the same features in every process, those of one process computing
  # alone up to float rounding (XLA compiles the forward for 4 instead of 8 images a device).
  got = res[0]['feats']
  np.testing.assert_array_equal(res[1]['feats'], got)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # Each process served its half of the global batches: together, the single process's.
  train_feats = res[0]['train_feats']
  order = next(pipeline.epoch_indices(len(train_feats), 8, 8, 0, 0, 0))[0][:8]
  np.testing.assert_array_equal(np.concatenate([r['train'] for r in res]), train_feats[order])
  np.testing.assert_allclose(np.concatenate([r['train'] for r in res]), want_train['image'],
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(np.concatenate([r['train_label'] for r in res]),
                                want_train['label'])
  local = [r['val'].reshape(batches, 4, *got.shape[1:]) for r in res]
  mask = np.concatenate([r['val_mask'].reshape(batches, 4) for r in res], axis=1).ravel()
  served = np.concatenate(local, axis=1).reshape(-1, *got.shape[1:])
  np.testing.assert_array_equal(served[mask], got)
