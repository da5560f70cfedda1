"""SIGTERM (preemption) of a single-process run: it saves the step it reached and exits with
preemption.EXIT_PREEMPTED within seconds; rerunning the command resumes there and ends
bit-identical to an uninterrupted run. A second SIGTERM during that save loses nothing that was
committed before. Signals are injected at exact points (tests/fault_runner.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import test_faults_kill as kill  # The same config, CLI and checks.
from inception.train import preemption
from inception.train import reporting

ROOT = kill.ROOT
FLAGS = ['--noprogress']  # Checkpoints at epoch ends only (3, 6, 9): a SIGTERM saves its step.


def _run(script: str, workdir: Path, cache: Path, fault: str = '', log: Path | None = None):
  extra = {'INCEPTION_FLAX_FAULT': fault, 'INCEPTION_FLAX_FAULT_LOG': str(log)} if fault else {}
  start = time.time()
  r = subprocess.run([sys.executable, script, f'--config={kill.CONFIG}', f'--workdir={workdir}',
                      *FLAGS], cwd=ROOT, env=kill._env(cache, **extra), capture_output=True,
                     text=True, timeout=300)
  return r, time.time()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('preempt')
  cache = tmp / 'cache'
  ref, _ = _run('train.py', tmp / 'reference', cache)
  assert ref.returncode == 0, ref.stderr[-3000:]
  return tmp, cache


@pytest.mark.slow
def test_sigterm_saves_the_step_reached_and_the_rerun_ends_bit_identical(runs):
  tmp, cache = runs
  wd, log = tmp / 'preempted', tmp / 'preempted.log'
  r, exited = _run('tests/fault_runner.py', wd, cache, 'sigterm_at_step:5', log)
  assert r.returncode == preemption.EXIT_PREEMPTED == 143, r.stderr[-3000:]
  assert 'SIGTERM received: saving a checkpoint at the current step' in r.stdout
  assert f'PREEMPTED: SIGTERM: stopped at step 5 after saving its checkpoint in {wd}' in r.stderr
  assert kill._steps(wd) == [3, 5]
  signalled = float(log.read_text().split()[1])
  assert exited - signalled < 15, exited - signalled  # Save and exit, not another epoch.
  _rerun_ends_as_the_reference(tmp, cache, wd, resumed_from=5)


@pytest.mark.slow
def test_a_second_sigterm_during_that_save_loses_nothing_committed(runs):
  tmp, cache = runs
  wd, log = tmp / 'twice', tmp / 'twice.log'
  # Items written at step 3: best/ and checkpoints/ (model, opt each); then the step-5 save's
  # first item.
  r, _ = _run('tests/fault_runner.py', wd, cache, 'sigterm_at_step:5,sigterm_in_save:5', log)
  assert r.returncode == -signal.SIGTERM, (r.returncode, r.stderr[-3000:])
  assert [l.split()[0] for l in log.read_text().splitlines()] == [
      'sigterm_at_step:5', 'sigterm_in_save:5']
  assert kill._steps(wd) == [3]  # The half-written step 5 never shows up as a checkpoint.
  _rerun_ends_as_the_reference(tmp, cache, wd, resumed_from=3)


@pytest.mark.slow
def test_sigterm_at_an_epoch_end_finishes_that_epochs_checkpoint_first(runs):
  tmp, cache = runs
  wd, log = tmp / 'epoch_end', tmp / 'epoch_end.log'
  # While the step-3 best/ checkpoint is written: the epoch's own checkpoint follows, then exit.
  r, _ = _run('tests/fault_runner.py', wd, cache, 'sigterm_in_save:1', log)
  assert r.returncode == preemption.EXIT_PREEMPTED, r.stderr[-3000:]
  assert 'stopped at step 3' in r.stderr and kill._steps(wd) == [3]
  _rerun_ends_as_the_reference(tmp, cache, wd, resumed_from=3)


def _rerun_ends_as_the_reference(tmp: Path, cache: Path, wd: Path, resumed_from: int) -> None:
  """The same train.py command again: it resumes from `resumed_from` and ends as the
  uninterrupted run did."""
  again, _ = _run('train.py', wd, cache)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'Resumed from {wd / "checkpoints"}/{resumed_from} ' in again.stdout
  _assert_same_end(tmp / 'reference', wd)


def _assert_same_end(ref: Path, wd: Path) -> None:
  want, want_meta = kill._model_bits(ref)
  got, got_meta = kill._model_bits(wd)
  assert got_meta['step'] == want_meta['step'] == 9
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  val = lambda w: [r for r in reporting.read_metrics(w) if r['split'] in ('validation',
                                                                         'train_epoch')]
  assert val(wd) == val(ref)
  for key in ('final_validation', 'test', 'best_validation'):
    assert json.loads((wd / 'summary.json').read_text())[key] == \
        json.loads((ref / 'summary.json').read_text())[key], key
