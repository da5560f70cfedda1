"""Multi-process jobs (jax.distributed) on localhost: 2 processes with one CPU device each,
talking through JAX's CPU collectives, against 1 process with 2 devices (same global batch,
same config). Training ends with equal parameters and identical metrics, each process reads
only its half of every batch, process 0 alone holds the lock and writes the run's files;
SIGTERM to one process stops all at the same step with its checkpoint written, and the run
resumes with the other process count; a killed process ends the job within the heartbeat
timeout; eval and predict run multi-process too.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import test_faults_kill as kill  # _env, _steps, _model_bits.
from data import testing
from inception.train import preemption
from inception.train import reporting

ROOT = kill.ROOT
# 24 training images / batch 8: 3 steps an epoch, 9 steps; checkpoints at epoch ends (3, 6, 9).
CONFIG = 'configs/smoke.py:epochs=3'
FLAGS = ['--noprogress']
HEARTBEAT_S = 5

pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _command(workdir: Path, *extra: str, runner: bool = True) -> list[str]:
  script = 'tests/fault_runner.py' if runner else 'train.py'
  return [sys.executable, script, f'--workdir={workdir}', *FLAGS, *extra]


def _env(cache: Path, devices: int = 1, **extra) -> dict:
  env = kill._env(cache, JAX_PLATFORMS='cpu', **extra)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def _one_process(workdir: Path, cache: Path, *extra: str, **env) -> subprocess.CompletedProcess:
  """train.py (via the fault runner) in 1 process with 2 CPU devices."""
  return subprocess.run(_command(workdir, *extra), cwd=ROOT, env=_env(cache, 2, **env),
                        capture_output=True, text=True, timeout=300)


def _two_processes(workdir: Path, cache: Path, *extra: str, env_by_process=({}, {}),
                   timeout: float = 300) -> list[tuple[int, str, str, float]]:
  """The same command in processes 0 and 1 of a 2-process job on localhost, 1 device each.

  Returns (exit status, stdout, stderr, seconds from start to exit) of each process.
  """
  port = _free_port()
  procs, outs = [], []
  start = time.monotonic()
  for i, more_env in enumerate(env_by_process):
    out = workdir.parent / f'{workdir.name}.p{i}.{len(list(workdir.parent.glob("*.p*.out")))}'
    outs.append((open(f'{out}.out', 'w+'), open(f'{out}.err', 'w+')))
    procs.append(subprocess.Popen(
        _command(workdir, *extra, f'--coordinator_address=localhost:{port}',
                 '--num_processes=2', f'--process_id={i}', f'--heartbeat_timeout={HEARTBEAT_S}'),
        cwd=ROOT, env=_env(cache, 1, **more_env), stdout=outs[-1][0], stderr=outs[-1][1]))
  results = []
  try:
    for proc, (out, err) in zip(procs, outs):
      rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
      ended = time.monotonic() - start
      out.seek(0)
      err.seek(0)
      results.append((rc, out.read(), err.read(), ended))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
    for out, err in outs:
      out.close()
      err.close()
  return results


def _metrics(workdir: Path) -> list[dict]:
  return reporting.read_metrics(workdir)


def _assert_close_end(ref: Path, wd: Path, exact: bool, resumed: bool = True) -> None:
  """Final parameters equal (bit for bit if `exact`, else to float32 tolerance) and the same
  metrics records as the reference run (a resumed run: the epoch and validation records; its
  first 'train' record after the resume averages fewer steps)."""
  want, want_meta = kill._model_bits(ref)
  got, got_meta = kill._model_bits(wd)
  assert got_meta['step'] == want_meta['step'] == 9
  for k in want:
    if exact:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    else:
      np.testing.assert_allclose(got[k].view(np.float32), want[k].view(np.float32), rtol=1e-5,
                                 atol=1e-6, err_msg=k)
  keep = lambda r: not resumed or r['split'] in ('train_epoch', 'validation')
  a, b = ([r for r in _metrics(w) if keep(r)] for w in (ref, wd))
  assert [(r['split'], r['step'], r['epoch']) for r in a] == \
      [(r['split'], r['step'], r['epoch']) for r in b]
  for x, y in zip(a, b):
    if exact:
      assert x == y
    else:
      np.testing.assert_allclose([x['loss'], x['accuracy']], [y['loss'], y['accuracy']],
                                 rtol=1e-5, atol=1e-6, err_msg=str(x))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One process with 2 devices, its training batches recorded."""
  tmp = tmp_path_factory.mktemp('multiprocess')
  cache, wd = tmp / 'cache', tmp / 'reference'
  (tmp / 'ref_batches').mkdir()
  r = _one_process(wd, cache, f'--config={CONFIG}',
                   INCEPTION_FLAX_RECORD_BATCHES=str(tmp / 'ref_batches'))
  assert r.returncode == 0, r.stderr[-3000:]
  return tmp, cache, wd


def _batches(directory: Path, process: int) -> list[dict]:
  lines = (directory / f'batches.{process}.jsonl').read_text().splitlines()
  return [json.loads(l) for l in lines]


def test_two_processes_train_as_one_process_with_two_devices(reference):
  tmp, cache, ref = reference
  wd, rec = tmp / 'two', tmp / 'two_batches'
  rec.mkdir()
  env = {'INCEPTION_FLAX_RECORD_BATCHES': str(rec)}
  results = _two_processes(wd, cache, f'--config={CONFIG}', env_by_process=(env, env))
  for rc, out, err, _ in results:
    assert rc == 0, err[-3000:]
    assert not [l for l in (out + err).splitlines() if l.startswith(('ERROR:', 'Traceback'))]
  # The same end: metrics records identical, parameters equal (to float tolerance; on this
  # CPU they come out bit-identical, which the check does not require).
  _assert_close_end(ref, wd, exact=False, resumed=False)
  summary, ref_summary = (json.loads((w / 'summary.json').read_text()) for w in (wd, ref))
  for key in ('final_validation', 'best_validation', 'test', 'steps'):
    assert summary[key] == ref_summary[key], key
  # Each process read only its half of each global batch of 8, the halves in order.
  whole = _batches(tmp / 'ref_batches', 0)
  halves = [_batches(rec, p) for p in (0, 1)]
  for step in range(9):
    assert [len(h[step]['label']) for h in halves] == [4, 4]
    assert halves[0][step]['image'] + halves[1][step]['image'] == whole[step]['image'], step
    assert halves[0][step]['label'] + halves[1][step]['label'] == whole[step]['label'], step
  # Process 0 holds the lock and writes the run's files and the progress; process 1 is quiet.
  assert 'Devices: 2 (cpu), processes: 2' in results[0][1]
  assert [l for l in results[1][1].splitlines() if not l.startswith('[Gloo]')] == []
  for name in ('run.json', 'data_manifest.json', 'metrics.jsonl', 'summary.json',
               'history.png', 'confusion_test.json'):
    assert (wd / name).is_file(), name
  assert kill._steps(wd) == [3, 6, 9]
  assert not [p for p in (wd / 'checkpoints').iterdir() if not p.name.isdigit()]  # No tmp dirs.


def test_sigterm_to_one_process_stops_both_at_one_step_then_one_process_resumes(reference):
  tmp, cache, ref = reference
  wd, log = tmp / 'preempt_2to1', tmp / 'preempt_2to1.log'
  fault = {'INCEPTION_FLAX_FAULT': 'sigterm_at_step:5', 'INCEPTION_FLAX_FAULT_LOG': str(log)}
  results = _two_processes(wd, cache, f'--config={CONFIG}', env_by_process=({}, fault))
  stopped = []
  for rc, out, err, _ in results:
    assert rc == preemption.EXIT_PREEMPTED, (rc, err[-3000:])
    line = next(l for l in err.splitlines() if l.startswith('PREEMPTED: '))
    stopped.append(int(line.split('stopped at step ')[1].split()[0]))
  assert stopped[0] == stopped[1], stopped  # Both agreed on the step ...
  step = stopped[0]
  assert 4 <= step < 9 and step in kill._steps(wd), (step, kill._steps(wd))  # ... and saved it.
  assert f'SIGTERM received by the job: every process saves step {step}' in results[0][1]
  # Resumed by one process with two devices: it ends as the uninterrupted run.
  r = _one_process(wd, cache, f'--config={CONFIG}')
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'Resumed from {wd / "checkpoints"}/{step} ' in r.stdout
  _assert_close_end(ref, wd, exact=False)


def test_one_process_preempted_resumes_as_two_processes(reference):
  tmp, cache, ref = reference
  wd, log = tmp / 'preempt_1to2', tmp / 'preempt_1to2.log'
  r = _one_process(wd, cache, f'--config={CONFIG}', INCEPTION_FLAX_FAULT='sigterm_at_step:5',
                   INCEPTION_FLAX_FAULT_LOG=str(log))
  assert r.returncode == preemption.EXIT_PREEMPTED, r.stderr[-3000:]
  assert kill._steps(wd) == [3, 5]
  results = _two_processes(wd, cache, f'--config={CONFIG}')
  for rc, _, err, _ in results:
    assert rc == 0, err[-3000:]
  assert f'Resumed from {wd / "checkpoints"}/5 ' in results[0][1]
  _assert_close_end(ref, wd, exact=False)


def test_a_killed_process_ends_the_job_and_the_rerun_resumes(reference):
  tmp, cache, ref = reference
  wd, log = tmp / 'killed', tmp / 'killed.log'
  fault = {'INCEPTION_FLAX_FAULT': 'train_step:5', 'INCEPTION_FLAX_FAULT_LOG': str(log)}
  (rc0, out0, err0, ended0), (rc1, *_rest, ended1) = _two_processes(
      wd, cache, f'--config={CONFIG}', env_by_process=({}, fault))
  assert rc1 == -signal.SIGKILL and log.read_text().strip() == 'train_step:5'
  # The survivor ends on its own, soon after the heartbeat timeout, saying why.
  assert rc0 != 0, out0[-2000:]
  assert 'Terminating process because the JAX distributed service detected fatal errors' \
      in err0, err0[-3000:]
  assert ended0 - ended1 < HEARTBEAT_S + 20, (ended0, ended1)
  assert kill._steps(wd) == [3]
  # The same commands again resume from the last complete checkpoint and end as the reference.
  results = _two_processes(wd, cache, f'--config={CONFIG}')
  for rc, _, err, _ in results:
    assert rc == 0, err[-3000:]
  assert f'Resumed from {wd / "checkpoints"}/3 ' in results[0][1]
  _assert_close_end(ref, wd, exact=False)


def _last_line(text: str) -> str:
  return text.strip().splitlines()[-1]


def test_eval_and_predict_in_two_processes_equal_one_process(reference):
  tmp, cache, ref = reference
  one = _one_process(ref, cache, '--mode=eval', '--split=test', '--checkpoint=best')
  assert one.returncode == 0, one.stderr[-3000:]
  two = _two_processes(ref, cache, '--mode=eval', '--split=test', '--checkpoint=best')
  for rc, _, err, _ in two:
    assert rc == 0, err[-3000:]
  assert _last_line(two[0][1]) == _last_line(one.stdout)
  assert ' (n=8)' in _last_line(one.stdout)
  # Predict over the test images (8 files: 4 per class; batches of 8 padded to a multiple of
  # the devices): the same rows, in the same order, written once.
  images = json.loads((ref / 'data_manifest.json').read_text())
  root = Path(json.loads((ref / 'run.json').read_text())['data']['root'])
  files = [str(root / e['path']) for e in images['splits']['test']]
  rows = {}
  for name, run in (('one', lambda *a: [_one_process(ref, cache, *a)]),
                    ('two', lambda *a: _two_processes(ref, cache, *a))):
    out = tmp / f'predict_{name}.csv'
    done = run('--mode=predict', f'--inputs={",".join(files)}', f'--output={out}')
    for r in done:
      rc, err = (r.returncode, r.stderr) if hasattr(r, 'returncode') else (r[0], r[2])
      assert rc == 0, err[-3000:]
    with out.open() as f:
      rows[name] = list(csv.DictReader(f))
  assert [r['path'] for r in rows['two']] == files
  assert rows['two'] == rows['one']


def test_two_processes_on_split_folders_with_balanced_sampling(reference, tmp_path):
  """data.splits='folders' (uneven classes) and data.sampling='balanced' in a 2-process job
  train as one process with 2 devices: the same records and parameters."""
  _, cache, _ = reference
  rng = np.random.default_rng(0)
  for split, counts in (('train', (18, 6)), ('validation', (4, 4)), ('test', (4, 4))):
    for i, (name, count) in enumerate(zip(('dog', 'horse'), counts)):
      testing.write_good(tmp_path / 'tree' / split / name, count, rng, size=(40, 40),
                         mean=70.0 + 90 * i, prefix=f'{split}_{name}')
  args = ['--config=configs/smoke.py:epochs=2', '--config.data.source=folder',
          '--config.data.splits=folders', f'--config.data.path={tmp_path / "tree"}',
          '--config.data.sampling=balanced']
  one = _one_process(tmp_path / 'one', cache, *args)
  assert one.returncode == 0, one.stderr[-3000:]
  for rc, _, err, _ in _two_processes(tmp_path / 'two', cache, *args):
    assert rc == 0, err[-3000:]
  a, b = _metrics(tmp_path / 'one'), _metrics(tmp_path / 'two')
  assert [(r['split'], r['step']) for r in a] == [(r['split'], r['step']) for r in b]
  for x, y in zip(a, b):
    np.testing.assert_allclose([x['loss'], x['accuracy']], [y['loss'], y['accuracy']],
                               rtol=1e-5, atol=1e-6, err_msg=str(x))
  manifest = json.loads((tmp_path / 'two' / 'data_manifest.json').read_text())
  assert manifest['num_examples'] == {'train': 24, 'validation': 8, 'test': 8}
