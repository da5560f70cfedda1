"""inception/paths.py and its users. Workdirs on object stores (gs://...): what the run writes
there goes through etils.epath and never needs what an object store lacks (append, read-write
opens, locks); what must stay local refuses a URI by name. Locally: atomic writes and the
clean-up of killed writers' temporary files.

The bucket is `etils.epath.testing.mock_epath` over a local folder, with an object store's
limits added: opening for append or update fails. Orbax's own gs:// support (tensorstore's
GCS driver) cannot be reached without a network and is not tested here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing

from inception import paths
from inception.train import checkpoints
from inception.train import reporting
from inception.train import validate

BUCKET = 'gs://fake-bucket'


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs://fake-bucket backed by tmp_path/bucket; the test runs in tmp_path/cwd, so that a path
  mistaken for a local one ('gs:/fake-bucket/...') would show up there."""
  root = tmp_path / 'bucket'
  root.mkdir()
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  # epath picks TensorFlow's file system for gs:// when TF is installed, past the mock; the
  # mock replaces the other (fsspec) backends, so TF's is turned off for the test.
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
  opened = []

  def local(path):
    text = os.fspath(path)
    if text.startswith(str(root)):  # The backend's own nested calls (replace -> isdir).
      return text
    assert text.startswith(BUCKET), f'not a bucket path: {text}'
    return str(root) + text[len(BUCKET):]

  def one(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def two(original, path, dst, *args, **kwargs):
    return original(local(path), local(dst), *args, **kwargs)

  def open_(original, path, mode):
    if 'a' in mode or '+' in mode:
      raise NotImplementedError(f'an object store cannot open {path} with mode {mode!r}')
    opened.append((os.fspath(path), mode))
    return original(local(path), mode)

  def glob(original, pattern):
    return [BUCKET + p[len(str(root)):] for p in original(local(pattern))]

  with epath_testing.mock_epath(
      open=open_, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
      rmtree=one, stat=one, rename=two, replace=two, copy=two, glob=glob):
    yield root
  assert not (cwd / 'gs:').exists(), 'a bucket path was written as a local folder'


def test_uris_are_kept_and_local_paths_expanded():
  assert paths.is_uri('gs://b/run') and paths.is_uri('s3://b/x') and paths.is_local('/tmp/x')
  assert os.fspath(paths.as_path('gs://b/run')) == 'gs://b/run'
  assert os.fspath(paths.as_path('~/x')) == os.path.expanduser('~/x')
  assert paths.same('gs://b/run/', 'gs://b/run') and not paths.same('gs://b/run', 'gs://b/r')
  with pytest.raises(ValueError, match='The feature cache directory gs://b/f is a URI, but it '
                     'must be a local folder \\(features are memory-mapped\\)'):
    paths.require_local('gs://b/f', 'The feature cache directory', 'features are memory-mapped')


def test_atomic_write_to_a_bucket_leaves_only_the_final_object(bucket):
  paths.write_text(f'{BUCKET}/run/a.json', '{}\n')
  with pytest.raises(KeyError):
    with paths.atomic_write(f'{BUCKET}/run/b.json') as f:
      f.write(b'half')
      raise KeyError('interrupted')
  assert sorted(os.listdir(bucket / 'run')) == ['a.json']
  assert (bucket / 'run' / 'a.json').read_text() == '{}\n'


@pytest.mark.parametrize('size', [0, 5, 2**20, 2**20 + 1, 3 * 2**20 + 7])  # Around the 1 MiB reads.
def test_file_digest_is_the_sha256_of_the_bytes(tmp_path, size):
  blob = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
  (tmp_path / 'f').write_bytes(blob)
  assert paths.file_digest(tmp_path / 'f') == hashlib.sha256(blob).hexdigest()
  assert paths.file_digest(str(tmp_path / 'f')) == hashlib.sha256(blob).hexdigest()


def test_file_digest_of_a_bucket_object(bucket):
  paths.write_bytes(f'{BUCKET}/run/a.bin', b'x' * 3000)
  assert paths.file_digest(f'{BUCKET}/run/a.bin') == hashlib.sha256(b'x' * 3000).hexdigest()


def test_file_digest_of_a_missing_file_raises_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError):
    paths.file_digest(tmp_path / 'missing')


def test_metrics_writer_on_a_bucket_rewrites_instead_of_appending(bucket):
  workdir = paths.as_path(f'{BUCKET}/run')
  workdir.mkdir(parents=True)
  record = lambda step: {'split': 'train', 'step': step, 'epoch': 1, 'loss': 0.5,
                         'accuracy': 0.5}
  # A killed writer's torn last write (not possible on an object store; from a local copy).
  (bucket / 'run' / 'metrics.jsonl').write_text(
      ''.join(json.dumps(record(s)) + '\n' for s in (1, 2, 3)) + '{"spl')
  w = reporting.MetricsWriter(workdir, tensorboard=False, resume_step=2)
  w.write('train', 3, 1, {'loss': 0.25, 'accuracy': 1.0})
  w.write('validation', 3, 1, {'loss': 0.75, 'accuracy': 0.5})
  got = reporting.read_metrics(f'{BUCKET}/run')
  assert [(r['split'], r['step']) for r in got] == [
      ('train', 1), ('train', 2), ('train', 3), ('validation', 3)]
  assert got[2]['loss'] == 0.25
  lines = (bucket / 'run' / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 4 and all(json.loads(l) for l in lines)


def test_run_outputs_on_a_bucket(bucket):
  stem = f'{BUCKET}/run/confusion_validation'
  result = reporting.save_confusion(np.array([[3, 1], [0, 4]]), ['cane', 'cavallo'], stem)
  assert result['accuracy'] == 0.875
  history = {'train': {1: {'accuracy': 0.5, 'loss': 0.7}, 2: {'accuracy': 0.8, 'loss': 0.4}},
             'validation': {1: {'accuracy': 0.6, 'loss': 0.6}, 2: {'accuracy': 0.9, 'loss': 0.3}}}
  reporting.plot_history(history, f'{BUCKET}/run/history.png')
  reporting.write_json(f'{BUCKET}/run/summary.json', {'steps': 2})
  run = bucket / 'run'
  assert json.loads((run / 'confusion_validation.json').read_text())['matrix'] == [[3, 1],
                                                                                   [0, 4]]
  for png in ('confusion_validation.png', 'history.png'):
    assert (run / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert json.loads((run / 'summary.json').read_text()) == {'steps': 2}
  assert not [n for n in os.listdir(run) if n.endswith('.tmp')]


def test_check_workdir_on_a_bucket(bucket):
  validate.check_workdir(f'{BUCKET}/new/run')
  assert (bucket / 'new' / 'run').is_dir() and not os.listdir(bucket / 'new' / 'run')


def test_check_workdir_names_an_unwritable_bucket(tmp_path, monkeypatch):
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)

  def refuse(original, path, mode):
    raise PermissionError(f'403 Forbidden: {path}')

  with epath_testing.mock_epath(open=refuse, makedirs=lambda *a, **k: None,
                                mkdir=lambda *a, **k: None):
    with pytest.raises(ValueError, match='--workdir gs://fake-bucket/run is not writable '
                       '\\(PermissionError: 403 Forbidden'):
      validate.check_workdir(f'{BUCKET}/run')


def test_workdir_lease_on_a_bucket(bucket):
  lock = checkpoints.WorkdirLock(f'{BUCKET}/run', renew_s=0.05).acquire()
  lease = json.loads((bucket / 'run' / '.lock').read_text())
  assert f'pid {os.getpid()}' in lease['owner']
  with pytest.raises(RuntimeError, match='Workdir gs://fake-bucket/run is in use by another '
                     'run \\(lease of .* renewed 0 s ago; lock gs://fake-bucket/run/.lock\\)'):
    checkpoints.WorkdirLock(f'{BUCKET}/run').acquire()
  time.sleep(0.3)
  renewed = json.loads((bucket / 'run' / '.lock').read_text())
  assert renewed['owner'] == lease['owner'] and renewed['renewed'] > lease['renewed']
  lock.release()
  assert not (bucket / 'run' / '.lock').exists()
  checkpoints.WorkdirLock(f'{BUCKET}/run').acquire().release()  # Free again.


def test_a_stale_lease_is_taken_over_loudly(bucket):
  (bucket / 'run').mkdir()
  (bucket / 'run' / '.lock').write_text(json.dumps(
      {'owner': 'deleted-vm pid 7 abc', 'renewed': time.time() - 3600}))
  messages = []
  lock = checkpoints.WorkdirLock(f'{BUCKET}/run', stale_s=300, log=messages.append).acquire()
  assert len(messages) == 1 and 'taking over the lock gs://fake-bucket/run/.lock: its holder ' \
      '(deleted-vm pid 7 abc) last renewed it 3600 s ago (> 300 s)' in messages[0], messages
  # A lease taken over by another run meanwhile is that run's: release leaves it.
  (bucket / 'run' / '.lock').write_text(json.dumps({'owner': 'other', 'renewed': time.time()}))
  lock.release()
  assert json.loads((bucket / 'run' / '.lock').read_text())['owner'] == 'other'


def test_a_lease_taken_over_stops_renewing_loudly(bucket):
  messages = []
  lock = checkpoints.WorkdirLock(f'{BUCKET}/run', renew_s=0.05, log=messages.append).acquire()
  (bucket / 'run' / '.lock').write_text(json.dumps({'owner': 'other', 'renewed': 1.0}))
  time.sleep(0.3)
  assert json.loads((bucket / 'run' / '.lock').read_text()) == {'owner': 'other',
                                                                 'renewed': 1.0}
  assert messages == ['ERROR: the lock gs://fake-bucket/run/.lock was taken over by other; '
                      'this run no longer holds its workdir and stops renewing. Stop one of '
                      'the two runs.']
  lock.release()
  assert (bucket / 'run' / '.lock').exists()


def test_the_local_lock_is_still_a_flock(tmp_path):
  with checkpoints.WorkdirLock(tmp_path):
    assert (tmp_path / '.lock').read_text() == str(os.getpid())
    with pytest.raises(RuntimeError, match=f'in use by another run \\(pid {os.getpid()};'):
      checkpoints.WorkdirLock(tmp_path).acquire()


def test_caches_refuse_uris(monkeypatch):
  from data import cache as data_cache  # pylint: disable=g-import-not-at-top
  from inception import weights  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', 'gs://b/cache')
  with pytest.raises(ValueError, match='INCEPTION_FLAX_CACHE=gs://b/cache is a URI, but the '
                     'cache must be a local folder'):
    data_cache.cache_dir()
  with pytest.raises(ValueError, match='INCEPTION_FLAX_CACHE gs://b/cache is a URI'):
    weights.default_cache_dir()
  monkeypatch.delenv('INCEPTION_FLAX_CACHE')
  with pytest.raises(ValueError, match='The weights file gs://b/w.npz is a URI, but it must be '
                     'a local folder'):
    weights.fetch('gs://b/w.npz', download=False)
  with pytest.raises(ValueError, match='The weights cache directory gs://b/c is a URI'):
    weights.fetch('tf2015', cache_dir='gs://b/c', download=False)


def test_an_epath_workdir_is_what_train_gets(tmp_path):
  """train.py hands the trainer an epath.Path; local behaviour is pathlib's."""
  p = paths.as_path(tmp_path / 'w')
  assert isinstance(p, epath.Path) and os.fspath(p) == str(tmp_path / 'w')


def test_temporaries_of_killed_writers_are_removed_and_no_others(tmp_path):
  """A writer killed inside `atomic_write` leaves its temporary file (a feature cache's can be
  gigabytes); the next writer of that folder removes it, but never a live process's."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  killed = subprocess.run(
      [sys.executable, '-c', 'import os, sys; from inception import paths\n'
       'with paths.atomic_write(sys.argv[1]) as f:\n'
       '  f.write(b"x" * 4096); f.flush(); os._exit(9)', str(tmp_path / 'train.npy')],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)
  assert killed.returncode == 9
  left = [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]
  assert len(left) == 1 and left[0].startswith('.train.npy.'), left
  with paths.atomic_write(tmp_path / 'live.npy') as f:  # This process's: alive.
    f.write(b'y')
    live = [n for n in os.listdir(tmp_path) if n.startswith('.live.npy.')]
    (tmp_path / '.x.npy.otherhost-1.abcd1234.tmp').write_bytes(b'z')
    (tmp_path / 'train.json').write_text('{}')
    messages = []
    freed = paths.remove_orphaned_temporaries(tmp_path, messages.append)
    assert freed == 4096
    assert messages == [f'Removed 1 temporary file(s) (0.0 MiB) that killed processes left in '
                        f'{tmp_path}.']
    assert sorted(os.listdir(tmp_path)) == sorted(
        live + ['.x.npy.otherhost-1.abcd1234.tmp', 'train.json'])
  assert (tmp_path / 'live.npy').read_bytes() == b'y'
