"""A rerun resumes a run only as that run: the same config (but for
`run_record.RESUME_CHANGEABLE`) and the same data; anything else is refused, naming what
differs, before the workdir is touched."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import default
from configs import smoke
from configs import validate
from data import testing
from inception.tools import evaluate
from inception.train import run_record
from inception.train import trainer

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures('module_cache')


def _config(epochs=1):
  return smoke.get_config(f'epochs={epochs},cut=stem')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished 1-epoch smoke run (copied per test: tests change it)."""
  wd = tmp_path_factory.mktemp('trained') / 'run'
  trainer.train(_config(1), wd, progress_bars=False, log=lambda _: None)
  return wd


def _copy(trained, tmp_path) -> Path:
  wd = tmp_path / 'run'
  shutil.copytree(trained, wd)
  return wd


@pytest.mark.slow
def test_a_changed_training_key_is_refused_before_anything_is_written(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  before = {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file()}
  c = _config(1)
  c.optimizer.lr = 0.5
  c.model.dropout = 0.3
  with pytest.raises(run_record.ConfigMismatchError,
                     match=r"--config differs from the run being resumed \(.*run\.json\) in keys "
                     r"that change how it trains: model\.dropout: run 0\.2, --config 0\.3; "
                     r"optimizer\.lr: run 0\.001, --config 0\.5\. Train it in another "
                     r"--workdir, or resume with the recorded values; a resumed run may change "
                     r"only train\.epochs, "):
    trainer.train(c, wd, progress_bars=False, log=lambda _: None)
  after = {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file() and p.name != '.lock'}
  assert after == {k: v for k, v in before.items() if k != '.lock'}


@pytest.mark.slow
def test_more_epochs_extend_the_run_and_say_so(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  messages = []
  c = _config(2)
  c.checkpoint.keep = 5
  summary = trainer.train(c, wd, progress_bars=False, log=messages.append)
  assert 'Resuming with checkpoint.keep=5 (the run started with 3).' in messages
  assert 'Resuming with train.epochs=2 (the run started with 1).' in messages
  assert summary['resumed_from_step'] > 0 and summary['steps'] == summary['total_steps']
  assert run_record.load(wd).config.train.epochs == 2


@pytest.mark.slow
def test_a_record_without_checkpoints_is_a_new_run(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  shutil.rmtree(wd / 'checkpoints')
  c = _config(1)
  c.optimizer.lr = 3e-3
  summary = trainer.train(c, wd, progress_bars=False, log=lambda _: None)
  assert summary['resumed_from_step'] == 0
  assert run_record.load(wd).config.optimizer.lr == 3e-3


def _with_retired_keys(record: dict) -> dict:
  """`record` (a run.json) as a run recorded before the `RETIRED` keys were removed holds it."""
  for key in run_record.RETIRED:
    *sections, name = key.split('.')
    node = record['config']
    for section in sections:
      node = node[section]
    node[name] = 'auto'
  return record


def test_retired_keys_are_gone_from_the_default_config():
  c = default.get_config()
  for key in run_record.RETIRED:
    *sections, name = key.split('.')
    for section in sections:
      c = c[section]
    assert name not in c, f'{key} is still in configs/default.py: it is not retired'


def test_a_record_with_a_retired_key_loads_without_it(tmp_path):
  """A run recorded before a knob was removed: the key is dropped on load, so today's config
  matches the record (eval/predict merge it, a resumed run compares with it)."""
  c = _config(1)
  (tmp_path / run_record.RECORD).write_text(json.dumps(_with_retired_keys({
      'format': run_record.FORMAT, 'config': json.loads(c.to_json_best_effort()),
      'class_names': ['a', 'b'], 'data': {}, 'weights': {}})))
  record = run_record.load(tmp_path)
  assert 'loss' not in record.config.train
  validate.check_keys(record.config, default.get_config())
  assert run_record.differences(record, c) == []
  assert run_record.merge(record, c) == record.config
  run_record.check_resume(record, c, log=pytest.fail)


@pytest.mark.slow
def test_a_run_recorded_with_a_retired_key_resumes_and_evaluates(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  path = wd / run_record.RECORD
  path.write_text(json.dumps(_with_retired_keys(json.loads(path.read_text()))))
  summary = trainer.train(_config(2), wd, progress_bars=False, log=lambda _: None)
  assert summary['resumed_from_step'] > 0
  assert 'loss' not in json.loads(path.read_text())['config']['train']
  assert evaluate.evaluate(wd, config=_config(2), log=lambda _: None)['count'] > 0


@pytest.mark.slow
def test_a_synthetic_fallback_run_is_not_resumed_on_the_real_data(tmp_path, monkeypatch):
  """Animals-10 asked for without a path and not found: the run fell back to synthetic data
  (loudly). Rerun once the data set is there, the same command must not continue that run on
  the real photos."""
  c = _config(1)
  c.data.source, c.data.path, c.data.images_per_class = 'animals10', '', 8
  monkeypatch.delenv('ANIMALS10_DIR', raising=False)
  wd = tmp_path / 'run'
  trainer.train(c, wd, progress_bars=False, log=lambda _: None)
  record = json.loads((wd / 'run.json').read_text())
  assert record['data']['is_synthetic']
  rng = np.random.default_rng(0)
  testing.write_good(tmp_path / 'animals10' / 'raw-img' / 'cane', 12, rng, prefix='dog')
  testing.write_good(tmp_path / 'animals10' / 'raw-img' / 'cavallo', 12, rng, prefix='horse')
  monkeypatch.setenv('ANIMALS10_DIR', str(tmp_path / 'animals10'))
  with pytest.raises(run_record.ConfigMismatchError,
                     match=r'The data prepared for this run \(Animals-10 .*\) is not the data '
                     r'the run being resumed trained on \(synthetic .*run\.json\): a resumed '
                     r'run continues on its own data\. Restore that data, or train in another '
                     r'--workdir\.'):
    trainer.train(c, wd, progress_bars=False, log=lambda _: None)
  assert json.loads((wd / 'run.json').read_text()) == record


@pytest.mark.slow
def test_train_py_exits_2_naming_the_key(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  p = subprocess.run([sys.executable, 'train.py', '--config=configs/smoke.py:epochs=1,cut=stem',
                      f'--workdir={wd}', '--config.optimizer.lr=0.5', '--noprogress'],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2, p.stderr[-2000:]
  assert 'Invalid config: --config differs from the run being resumed' in p.stderr
  assert 'optimizer.lr: run 0.001, --config 0.5' in p.stderr
