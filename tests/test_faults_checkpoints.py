"""Damaged checkpoints, a workdir without a usable one, the workdir lock, metrics.jsonl repair."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inception.train import checkpoints
from inception.train import reporting
from inception.train import steps as steps_lib

ROOT = Path(__file__).resolve().parent.parent
_TX = optax.adam(1e-3)


def _state(step: int) -> steps_lib.TrainState:
  """A tiny TrainState whose values identify `step`."""
  params = {'head': {'kernel': jnp.arange(12., dtype=jnp.float32).reshape(3, 4) + step,
                     'bias': jnp.full([4], float(step))}}
  return steps_lib.TrainState(step=jnp.int32(step), params=params, batch_stats={},
                              opt_state=_TX.init(params))


@pytest.fixture(scope='module')
def two_checkpoints(tmp_path_factory):
  """<dir>/1 and <dir>/2, complete."""
  d = tmp_path_factory.mktemp('ckpt') / 'checkpoints'
  mngr = checkpoints.manager(d, 3, async_save=False)
  for s in (1, 2):
    checkpoints.save(mngr, _state(s), {'epoch': s})
  mngr.close()
  return d


def _files(d: Path) -> list[str]:
  return sorted(p.relative_to(d).as_posix() for p in (d / '2').rglob('*') if p.is_file())


def _restore(d: Path):
  mngr = checkpoints.manager(d, 3, async_save=False)
  logs: list[str] = []
  try:
    state, meta = checkpoints.restore(mngr, _state(0), log=logs.append)
  finally:
    mngr.close()
  return state, meta, logs


def _same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(jax.device_get(a)),
                                                  jax.tree.leaves(jax.device_get(b))))


# orbax leaves the coroutines of a failed read un-awaited; harmless.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('damage', ['emptied', 'truncated'])
def test_every_damaged_file_of_the_latest_checkpoint_is_caught(two_checkpoints, tmp_path,
                                                               damage):
  """Each file of checkpoint 2 in turn emptied (0 bytes) or cut in half: the restore gives
  step 2 exactly (orbax does not need that file) or reports 2 as damaged and gives step 1
  exactly. Never wrong values, never an exception."""
  fell_back = []
  for name in _files(two_checkpoints):
    d = tmp_path / name.replace('/', '_') / 'checkpoints'
    shutil.copytree(two_checkpoints, d)
    blob = (d / name).read_bytes()
    (d / name).write_bytes(b'' if damage == 'emptied' else blob[:len(blob) // 2])
    state, meta, logs = _restore(d)
    assert _same(state.params, _state(meta['step']).params), name
    assert _same(state.opt_state, _state(meta['step']).opt_state), name
    if meta['step'] == 1:
      fell_back.append(name)
      assert any(f'{d}/2 is damaged or unreadable' in l for l in logs), (name, logs)
    else:
      assert meta['step'] == 2 and not logs, (name, logs)
  # The files that hold the data and its layout are among those caught.
  for must in ('meta/metadata', 'model/_METADATA', 'model/manifest.ocdbt', 'opt/_METADATA'):
    assert f'2/{must}' in fell_back, (must, fell_back)


def test_no_usable_checkpoint_raises_with_the_directory(two_checkpoints, tmp_path):
  d = tmp_path / 'checkpoints'
  shutil.copytree(two_checkpoints, d)
  for s in ('1', '2'):
    (d / s / 'model' / '_METADATA').write_bytes(b'')
  with pytest.raises(checkpoints.NoCheckpointError,
                     match=rf'No usable checkpoint in {d}; tried steps \[2, 1\]'):
    _restore(d)


def _env(cache: Path) -> dict:
  env = dict(os.environ, INCEPTION_FLAX_CACHE=str(cache), PYTHONPATH=str(ROOT),
             TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('INCEPTION_FLAX_FAULT', None)
  return env


@pytest.mark.slow
def _with_run_record(workdir: Path) -> Path:
  """A minimal run record (run.json) of the smoke config in `workdir`."""
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from inception.train import run_record  # pylint: disable=g-import-not-at-top
  workdir.mkdir(parents=True, exist_ok=True)
  record = {'format': run_record.FORMAT,
            'config': json.loads(smoke.get_config('cut=stem').to_json_best_effort()),
            'class_names': ['a', 'b'], 'weights': {'variant': {'mixed10_pool': 'avg'}},
            'data': {'is_synthetic': False, 'manifest_sha256': '', 'root': ''}}
  (workdir / run_record.RECORD).write_text(json.dumps(record))
  return workdir


def test_eval_without_a_usable_checkpoint_fails_naming_the_workdir(two_checkpoints, tmp_path):
  """train.py --mode eval: no run record, no checkpoints/ at all, only damaged checkpoints."""
  unknown = tmp_path / 'unknown'
  empty = _with_run_record(tmp_path / 'empty')
  damaged = _with_run_record(tmp_path / 'damaged')
  shutil.copytree(two_checkpoints, damaged / 'checkpoints')
  for s in ('1', '2'):
    (damaged / 'checkpoints' / s / 'meta' / 'metadata').write_bytes(b'{')
  for wd, message in ((unknown, f'{unknown}/run.json not found: --workdir={unknown} is not the '
                                'workdir of a trained run (the folder does not exist)'),
                      (empty, f'No checkpoints at {empty}/checkpoints; the run in {empty} saved '
                              'none yet'),
                      (damaged, f'No usable checkpoint in {damaged}/checkpoints')):
    r = subprocess.run([sys.executable, 'train.py', f'--workdir={wd}', '--mode=eval',
                        '--noprogress'], cwd=ROOT, env=_env(tmp_path / 'cache'),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert message in r.stderr, r.stderr[-3000:]


@pytest.mark.slow
def test_training_over_only_damaged_checkpoints_starts_fresh_loudly(tmp_path, monkeypatch):
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from inception.train import trainer  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  wd = tmp_path / 'run'
  # A checkpoint directory of step 2 that is nothing but garbage (a previous run's remains).
  (wd / 'checkpoints' / '2' / 'model').mkdir(parents=True)
  (wd / 'checkpoints' / '2' / 'model' / '_METADATA').write_text('garbage')
  logs: list[str] = []
  summary = trainer.train(smoke.get_config('epochs=1,cut=stem'), wd, log=logs.append,
                          progress_bars=False)
  assert any('STARTING TRAINING FROM SCRATCH' in l and f'{wd}/checkpoints' in l
             for l in logs), logs
  assert summary['resumed_from_step'] == 0 and summary['steps'] == 3
  assert (wd / 'checkpoints' / '3').is_dir()


def test_lock_of_a_killed_holder_is_free(tmp_path):
  """A second run is refused while the first holds the lock; SIGKILL of the holder frees it."""
  code = ('import sys, time; from inception.train import checkpoints; '
          'checkpoints.WorkdirLock(sys.argv[1]).acquire(); print("locked", flush=True); '
          'time.sleep(600)')
  holder = subprocess.Popen([sys.executable, '-c', code, str(tmp_path)], cwd=ROOT,
                            env=_env(tmp_path / 'cache'), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(RuntimeError, match=rf'in use by another run \(pid {holder.pid};'):
      checkpoints.WorkdirLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=60) == -signal.SIGKILL
  finally:
    if holder.poll() is None:
      holder.kill()
  lock = checkpoints.WorkdirLock(tmp_path).acquire()  # The kernel released the flock.
  assert (tmp_path / '.lock').read_text() == str(os.getpid())
  lock.release()


def _record(split, step, loss=0.5):
  return {'split': split, 'step': step, 'epoch': 1, 'loss': loss, 'accuracy': 0.5}


def test_metrics_writer_resume_drops_records_after_the_checkpoint(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  old = [_record('train', 2), _record('train', 3), _record('train_epoch', 3),
         _record('train', 4, loss=9.0)]
  # A killed process's torn last write ends the file.
  path.write_text(''.join(json.dumps(r) + '\n' for r in old) + '{"split": "tra')
  assert reporting.read_metrics(tmp_path)[-1] == old[-1]  # Reader skips the torn line.
  w = reporting.MetricsWriter(tmp_path, tensorboard=False, resume_step=3)
  assert [json.loads(l) for l in path.read_text().splitlines()] == old[:3]
  w.write('train', 4, 1, {'loss': 0.25, 'accuracy': 1.0})
  lines = [json.loads(l) for l in path.read_text().splitlines()]
  assert [(r['split'], r['step']) for r in lines] == [
      ('train', 2), ('train', 3), ('train_epoch', 3), ('train', 4)]
  assert lines[-1]['loss'] == 0.25


def test_metrics_writer_append_only_repairs_a_torn_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text(json.dumps(_record('train', 2)) + '\n{"split": "tr')
  w = reporting.MetricsWriter(tmp_path, tensorboard=False)
  w.write('train', 3, 1, {'loss': 0.5, 'accuracy': 0.5})
  assert [r['step'] for r in reporting.read_metrics(tmp_path)] == [2, 3]
  path.write_text('{"split": "tr\n' + json.dumps(_record('train', 2)) + '\n')
  with pytest.raises(ValueError, match='metrics.jsonl, line 1: not JSON'):
    reporting.read_metrics(tmp_path)
