"""Bad configs fail before any heavy work, naming the key and the choices (adds to
tests/test_configs.py); train.py's exit codes: 2 for a bad config, 3 for a non-finite loss."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import dog_horse
from configs import validate

ROOT = Path(__file__).resolve().parent.parent


def _set(c, key: str, value) -> None:
  *path, last = key.split('.')
  for p in path:
    c = c[p]
  c[last] = value


@pytest.mark.parametrize('key,value,message', [
    ('seed', -1, 'config.seed=-1 must be in [0, None]'),
    ('model.dropout', -0.1, 'config.model.dropout=-0.1 must be in [0, 1)'),
    ('model.dense_units', -5, 'config.model.dense_units=-5 must be in [0, None]'),
    ('model.weights', '/nonexistent/w.npz', "is neither a known name (random, tf2015"),
    ('optimizer.lr', float('nan'), 'config.optimizer.lr is NaN'),
    ('optimizer.lr', 0.0, 'config.optimizer.lr=0.0 must be in (0, None]'),
    ('optimizer.momentum', -0.9, 'config.optimizer.momentum=-0.9 must be in [0, 1)'),
    ('optimizer.rho', 1.0, 'config.optimizer.rho=1.0 must be in [0, 1)'),
    ('optimizer.epsilon', 0.0, 'config.optimizer.epsilon=0.0 must be in (0, None]'),
    ('optimizer.param_rules', (), 'config.optimizer.param_rules'),
    ('train.log_every_steps', 0, 'config.train.log_every_steps=0 must be in [1, None]'),
    ('checkpoint.every_steps', -1, 'config.checkpoint.every_steps=-1 must be in [0, None]'),
    ('eval.batch_size', 0, 'config.eval.batch_size=0 must be in [1, None]'),
    ('data.source', 'imagenet', "data.source='imagenet' is not valid; valid: "),
    ('data.resize_method', 'cubic', "data.resize_method='cubic' is not valid; valid: "),
    ('data.validation_fraction', -0.1, 'data.validation_fraction=-0.1 must be in [0.0, 0.99]'),
    ('data.images_per_class', -1, 'data.images_per_class=-1 must be in [0, None]'),
    ('data.augment.rotation_range', -10.0, 'data.augment.rotation_range=-10.0 must be in'),
    ('data.augment.zoom_range', -0.2, 'data.augment.zoom_range=-0.2 must be in [0, 0.99]'),
    ('data.path', '/nonexistent/animals', "data.path='/nonexistent/animals' does not exist"),
])
def test_more_bad_fields_name_key_and_choices(key, value, message):
  c = dog_horse.get_config()
  _set(c, key, value)
  with pytest.raises(ValueError) as e:
    validate.validate(c, device_count=1)
  assert message in str(e.value)


def test_eval_batch_not_divisible_by_devices():
  c = dog_horse.get_config()
  c.train.batch_size, c.eval.batch_size = 8, 20
  with pytest.raises(ValueError, match='config.eval.batch_size=20 is not divisible by the '
                     'device count 8'):
    validate.validate(c, device_count=8)


def test_existing_read_only_workdir(tmp_path, monkeypatch):
  """Runs as root too (CI): the permission check is made to see what a chmod 555 folder shows
  an unprivileged user."""
  from inception.train import validate as run_validate  # pylint: disable=g-import-not-at-top
  wd = tmp_path / 'run'
  wd.mkdir()
  real_access = os.access
  monkeypatch.setattr(run_validate.os, 'access', lambda p, mode: False if str(p) == str(wd)
                      else real_access(p, mode))
  with pytest.raises(ValueError, match=f'--workdir {wd} is not writable'):
    validate.validate(dog_horse.get_config(), device_count=1, workdir=wd)


def _train_py(args: list[str], tmp_path: Path, timeout=300) -> subprocess.CompletedProcess:
  env = dict(os.environ, INCEPTION_FLAX_CACHE=str(tmp_path / 'cache'), PYTHONPATH=str(ROOT),
             TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, 'train.py', *args, '--noprogress'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize('args,message', [
    (['--config=configs/smoke.py:cut=mixed11'],
     "Invalid config: config.model.cut='mixed11' is not valid; valid: stem, mixed0"),
    (['--config=configs/smoke.py', '--config.train.epoch=3'],
     "no such key 'epoch' (did you mean 'epochs'?); valid keys in config.train: batch_size, "
     'class_weight, ema_decay, epochs,'),
    (['--config=configs/smoke.py', '--config.trian.epochs=3'],
     "no such key 'trian' (did you mean 'train'?); valid keys in config: checkpoint, data,"),
    (['--config=configs/smoke.py:cutt=stem'],
     "Unknown config arg 'cutt'; valid keys: batch_size, cut, epochs, images_per_class"),
    (['--config=configs/nonexistent.py'],
     "Invalid config: --config=configs/nonexistent.py: "),
])
def test_train_py_bad_config_exits_2_before_any_work(args, message, tmp_path):
  wd = tmp_path / 'run'
  t0 = time.monotonic()
  r = _train_py([*args, f'--workdir={wd}'], tmp_path)
  took = time.monotonic() - t0
  assert r.returncode == 2, r.stderr[-3000:]
  assert message in r.stderr, r.stderr[-3000:]
  assert 'Traceback' not in r.stderr, r.stderr[-3000:]
  # Before any data or weights work: nothing cached, no workdir.
  assert not (tmp_path / 'cache').exists()
  assert not wd.exists()
  assert took < 120, took  # Interpreter and imports only (~10 s on 2 busy cores).


@pytest.mark.slow
def test_train_py_nonfinite_loss_exits_3_keeping_good_checkpoints(tmp_path):
  wd = tmp_path / 'run'
  r = _train_py(['--config=configs/smoke.py:epochs=2,cut=stem', f'--workdir={wd}',
                 '--config.optimizer.name=sgd', '--config.optimizer.lr=1e30',
                 '--config.checkpoint.every_steps=1'], tmp_path)
  assert r.returncode == 3, r.stderr[-3000:]
  line = next(l for l in r.stderr.splitlines() if l.startswith('ERROR: Non-finite loss'))
  step = int(line.split('at step ')[1].split(';')[0])
  steps = sorted(int(p.name) for p in (wd / 'checkpoints').iterdir() if p.name.isdigit())
  assert all(s < step for s in steps), (step, steps)
  last = f'step {max(steps)}' if steps else 'none'
  assert f'Last good checkpoint: {last} in {wd}/checkpoints' in line, line


def test_train_py_starts_quietly(tmp_path):
  """No library start-up notice that reads like a failure (CUDA probes on a CPU machine, TF's
  CPU-instruction notice, JAX's missing TPU backend); the message that matters is all there is."""
  env = dict(os.environ, INCEPTION_FLAX_CACHE=str(tmp_path / 'cache'), PYTHONPATH=str(ROOT))
  for key in ('TF_CPP_MIN_LOG_LEVEL', 'INCEPTION_FLAX_VERBOSE'):
    env.pop(key, None)
  r = subprocess.run([sys.executable, 'train.py', f'--workdir={tmp_path / "none"}',
                      '--mode=eval'], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 1
  assert r.stderr.startswith('ERROR: '), r.stderr[:2000]
  for noise in ('cuInit', 'cudart_stub', 'cpu_feature_guard', "backend 'tpu'",
                'absl::InitializeLog'):
    assert noise not in r.stdout + r.stderr, noise
