"""SIGKILL at exact points of a run (tests/fault_runner.py) and at a random moment, then a rerun
of the same train.py command: it resumes from the last complete checkpoint and ends with the
same parameters (bit for bit on CPU) and metrics as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from inception.train import reporting

ROOT = Path(__file__).resolve().parent.parent
CONFIG = 'configs/smoke.py:epochs=3,cut=stem'
# 24 training images / batch 8 = 3 steps per epoch, 9 steps; checkpoints every 2 steps and at
# epoch ends: 2, 3, 4, 6, 8, 9 (keep 3).
FLAGS = ['--config.checkpoint.every_steps=2', '--noprogress']
# The faults in the order they are injected into the same workdir, each as
# (INCEPTION_FLAX_FAULT, what it interrupts). Counts are per process, so each fires wherever
# the previous resume left the run (the test asserts that each did fire).
FAULTS = (('train_step:5', 'a train step'),
          ('ckpt_write:2', 'writing a checkpoint (model item written, opt item not)'),
          ('ckpt_commit:1', 'committing a checkpoint (files written, not renamed)'),
          ('eval_step:1', 'the validation pass at an epoch end'))


def _env(cache: Path, **extra) -> dict:
  env = dict(os.environ, INCEPTION_FLAX_CACHE=str(cache), PYTHONPATH=str(ROOT),
             TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')  # Killed: no buffer is lost.
  env.pop('INCEPTION_FLAX_FAULT', None)
  env.update(extra)
  return env


def _cli(workdir: Path, cache: Path, *, fault: str = '', fault_log: Path | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
  """train.py (or the fault runner when `fault`) with CONFIG on `workdir`."""
  script = 'tests/fault_runner.py' if fault else 'train.py'
  extra = {'INCEPTION_FLAX_FAULT': fault, 'INCEPTION_FLAX_FAULT_LOG': str(fault_log)} \
      if fault else {}
  return subprocess.run([sys.executable, script, f'--config={CONFIG}', f'--workdir={workdir}',
                         *FLAGS], cwd=ROOT, env=_env(cache, **extra), capture_output=True,
                        text=True, timeout=timeout)


def _steps(workdir: Path) -> list[int]:
  d = workdir / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _kill_at_random_moment(workdir: Path, cache: Path, rng: random.Random
                           ) -> tuple[int, str]:
  """Starts train.py, SIGKILLs it from outside soon after its first checkpoint.

  Returns (exit status, its stdout + stderr).
  """
  out = workdir.with_name(workdir.name + '.external.log')
  with out.open('w') as f:
    proc = subprocess.Popen([sys.executable, 'train.py', f'--config={CONFIG}',
                             f'--workdir={workdir}', *FLAGS], cwd=ROOT, env=_env(cache),
                            stdout=f, stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + 240
      while not _steps(workdir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
      time.sleep(rng.uniform(0.0, 0.5))
      proc.send_signal(signal.SIGKILL)
      rc = proc.wait(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
  return rc, out.read_text()


def _model_bits(workdir: Path) -> tuple[dict, dict]:
  """{param path: uint32 view} and meta of the latest checkpoint (restored in this process)."""
  from inception.tools import evaluate  # pylint: disable=g-import-not-at-top
  restored = evaluate.restore(workdir, 'latest', log=lambda s: None)
  model_vars, meta = restored.variables, restored.meta
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(model_vars))
  return {jax.tree_util.keystr(p): np.asarray(v).view(np.uint32) for p, v in leaves}, meta


def _lines(workdir: Path) -> list[dict]:
  path = workdir / 'metrics.jsonl'
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """An uninterrupted run, and a run killed 5 times (FAULTS + an external SIGKILL) then rerun.

  Returns (reference workdir, killed workdir, [(fault, checkpoint steps after it, stdout of the
  process it killed)], final CompletedProcess).
  """
  tmp = tmp_path_factory.mktemp('kill')
  cache = tmp / 'cache'
  mp = pytest.MonkeyPatch()
  mp.setenv('INCEPTION_FLAX_CACHE', str(cache))
  ref, wd, fault_log = tmp / 'reference', tmp / 'killed', tmp / 'faults.log'
  done = _cli(ref, cache)
  assert done.returncode == 0, done.stderr[-3000:]
  assert _steps(ref) == [6, 8, 9]

  rc, out = _kill_at_random_moment(wd, cache, random.Random(6))
  assert rc == -signal.SIGKILL, out[-3000:]
  history = [('external SIGKILL', _steps(wd), out)]
  for fault, what in FAULTS:
    before = _lines(wd)
    r = _cli(wd, cache, fault=fault, fault_log=fault_log)
    assert r.returncode == -signal.SIGKILL, (
        f'{fault} ({what}) did not fire: rc {r.returncode}\n{r.stderr[-3000:]}')
    after = _lines(wd)
    # Nothing a finished step wrote is lost: the lines up to the resumed checkpoint stay.
    resumed = _resumed_step(r.stdout)
    assert [l for l in after if l['step'] <= resumed] == [
        l for l in before if l['step'] <= resumed], fault
    history.append((fault, _steps(wd), r.stdout))
  assert fault_log.read_text().split() == [f for f, _ in FAULTS]
  final = _cli(wd, cache)
  assert final.returncode == 0, final.stderr[-3000:]
  yield ref, wd, history, final
  mp.undo()


def _resumed_step(stdout: str) -> int:
  for line in stdout.splitlines():
    if line.startswith('Resumed from '):
      return int(line.split()[2].rsplit('/', 1)[1])
  return 0


@pytest.mark.slow
def test_each_rerun_resumes_from_the_last_complete_checkpoint(runs):
  _, wd, history, final = runs
  outputs = [out for _, _, out in history[1:]] + [final.stdout]
  for (fault, steps, _), out in zip(history, outputs):
    # The newest listed checkpoint is complete: the next process resumes from it, with no
    # damage reported (a half-written save never shows up as a step).
    assert steps, fault
    assert f'Resumed from {wd / "checkpoints"}/{max(steps)} ' in out, (fault, steps, out[-2000:])
    assert 'damaged' not in out, (fault, out[-2000:])


@pytest.mark.slow
def test_final_parameters_are_bit_identical(runs):
  ref, wd, _, _ = runs
  want, want_meta = _model_bits(ref)
  got, got_meta = _model_bits(wd)
  assert got_meta['step'] == want_meta['step'] == 9
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert got_meta['best'] == want_meta['best']
  assert got_meta['validation'] == want_meta['validation']


@pytest.mark.slow
def test_final_evaluation_is_equal(runs):
  ref, wd, _, _ = runs
  s_ref = json.loads((ref / 'summary.json').read_text())
  s_got = json.loads((wd / 'summary.json').read_text())
  for key in ('steps', 'final_validation', 'test', 'best_validation'):
    assert s_got[key] == s_ref[key], key
  assert s_got['resumed_from_step'] > 0
  # Validation records (one per epoch) are equal too.
  val = lambda w: [r for r in reporting.read_metrics(w) if r['split'] == 'validation']
  assert val(wd) == val(ref)


@pytest.mark.slow
def test_metrics_equal_the_uninterrupted_run_line_for_line(runs):
  ref, wd, _, _ = runs
  s_ref = json.loads((ref / 'summary.json').read_text())
  s_got = json.loads((wd / 'summary.json').read_text())
  strip = lambda s: {k: v for k, v in s.items() if k not in ('wall_time_s', 'resumed_from_step')}
  assert strip(s_got) == strip(s_ref)
  assert _lines(wd) == _lines(ref)
