"""End to end on the synthetic data: train -> checkpoint -> resume -> eval -> predict."""

import csv
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip('data')

from configs import smoke  # pylint: disable=g-import-not-at-top
from inception import checkpoints
from inception import evaluate
from inception import predict
from inception import trainer


@pytest.fixture(scope='module', autouse=True)
def _cache(tmp_path_factory):
  old = os.environ.get('INCEPTION_FLAX_CACHE')
  os.environ['INCEPTION_FLAX_CACHE'] = str(tmp_path_factory.mktemp('cache'))
  yield
  if old is None:
    del os.environ['INCEPTION_FLAX_CACHE']
  else:
    os.environ['INCEPTION_FLAX_CACHE'] = old


def _config(epochs=2):
  c = smoke.get_config(f'epochs={epochs},cut=stem')
  c.optimizer.lr = 3e-3
  return c


def _model_bits(config, workdir, checkpoint='latest'):
  setup = trainer.build(config, with_weights=False, workdir=workdir)
  model_vars, meta = evaluate.restore_model(config, workdir, checkpoint, setup)
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(model_vars))
  return {jax.tree_util.keystr(p): np.asarray(v).view(np.uint32) for p, v in leaves}, meta


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """An uninterrupted 2-epoch run, and one stopped after epoch 1 then resumed."""
  root = tmp_path_factory.mktemp('runs')
  full = trainer.train(_config(2), root / 'full', progress_bars=False)
  first = trainer.train(_config(1), root / 'resumed', progress_bars=False)
  resumed = trainer.train(_config(2), root / 'resumed', progress_bars=False)
  return root, full, first, resumed


@pytest.mark.slow
def test_resume_is_bit_identical(runs):
  root, full, first, resumed = runs
  assert first['steps'] == 3 and resumed['steps'] == full['steps'] == 6
  assert resumed['resumed_from_step'] == 3
  a, meta_a = _model_bits(_config(2), root / 'full')
  b, meta_b = _model_bits(_config(2), root / 'resumed')
  assert meta_a['step'] == meta_b['step'] == 6
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert full['final_validation'] == resumed['final_validation']


@pytest.mark.slow
def test_outputs_written(runs):
  root, full, _, _ = runs
  wd = root / 'full'
  for name in ('metrics.jsonl', 'history.png', 'confusion_validation.png',
               'confusion_validation.json', 'config.json', 'data_info.json', 'weights.json',
               'summary.json'):
    assert (wd / name).is_file(), name
  assert json.loads((wd / 'data_info.json').read_text())['is_synthetic'] is True
  conf = json.loads((wd / 'confusion_validation.json').read_text())
  assert conf['count'] == full['final_validation']['count'] == 8
  assert conf['accuracy'] == pytest.approx(full['final_validation']['accuracy'])
  records = [json.loads(l) for l in (wd / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records if r['split'] == 'validation'] == [1, 2]
  assert sorted(p.name for p in (wd / 'tensorboard').iterdir()) == [
      'train', 'train_epoch', 'validation']
  from inception import reporting  # pylint: disable=g-import-not-at-top
  events = reporting.read_events(next((wd / 'tensorboard' / 'validation').iterdir()))
  assert sorted({(s, t) for s, t, _ in events}) == [(3, 'accuracy'), (3, 'loss'),
                                                     (6, 'accuracy'), (6, 'loss')]
  assert sorted(int(p.name) for p in (wd / 'checkpoints').iterdir() if p.name.isdigit()) == [3, 6]
  assert len([p for p in (wd / 'best').iterdir() if p.name.isdigit()]) == 1


@pytest.mark.slow
def test_rerun_of_finished_run_is_a_noop(runs):
  root, full, _, _ = runs
  again = trainer.train(_config(2), root / 'full', progress_bars=False)
  assert again['resumed_from_step'] == 6 and again['steps'] == 6
  assert again['final_validation'] == full['final_validation']


@pytest.mark.slow
def test_evaluate_and_predict(runs, tmp_path):
  root, full, _, _ = runs
  wd = root / 'full'
  c = _config(2)
  val = evaluate.evaluate(c, wd, checkpoint='latest', split='validation')
  assert val['accuracy'] == pytest.approx(full['final_validation']['accuracy'])
  assert val['loss'] == pytest.approx(full['final_validation']['loss'], rel=1e-5)
  test = evaluate.evaluate(c, wd, checkpoint='3', split='test')
  assert test['step'] == 3 and test['count'] == 8
  info = json.loads((wd / 'data_info.json').read_text())
  test_dir = Path(info['root']) / 'test'
  folder = evaluate.evaluate(c, wd, checkpoint='latest', eval_dir=str(test_dir))
  assert folder['count'] == 8
  assert folder['accuracy'] == pytest.approx(full['test']['accuracy'])
  out = tmp_path / 'preds.csv'
  rows = predict.predict(c, wd, [str(test_dir)], output=str(out))
  assert len(rows) == 8
  with open(out) as f:
    csv_rows = list(csv.DictReader(f))
  assert [r['path'] for r in csv_rows] == [r['path'] for r in rows]
  names = info['class_names']
  for r in rows:
    probs = [r[f'p_{n}'] for n in names]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert r['class'] == names[int(np.argmax(probs))]
  # The folder evaluation and the predictions agree on which files are right.
  right = sum(Path(r['path']).parent.name == r['class'] for r in rows)
  assert right / 8 == pytest.approx(folder['accuracy'])
  with pytest.raises(checkpoints.NoCheckpointError, match='No checkpoints at'):
    evaluate.evaluate(c, tmp_path / 'empty')


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back(runs, tmp_path):
  root, _, _, _ = runs
  wd = tmp_path / 'copy'
  shutil.copytree(root / 'full', wd)
  for f in (wd / 'checkpoints' / '6' / 'model').rglob('*'):
    if f.is_file():
      f.write_bytes(b'garbage')
  messages = []
  bits, meta = _model_bits_with_log(_config(2), wd, messages)
  assert meta['step'] == 3
  assert any('checkpoints/6 is damaged' in m for m in messages), messages


def _model_bits_with_log(config, workdir, messages):
  setup = trainer.build(config, with_weights=False, workdir=workdir, log=messages.append)
  return evaluate.restore_model(config, workdir, 'latest', setup, log=messages.append)


def test_second_run_in_same_workdir_is_refused(tmp_path):
  with checkpoints.WorkdirLock(tmp_path):
    with pytest.raises(RuntimeError, match=f'in use by another run \\(pid {os.getpid()}'):
      trainer.train(_config(1), tmp_path, progress_bars=False)
  # Released: a new lock can be taken.
  checkpoints.WorkdirLock(tmp_path).acquire().release()


@pytest.mark.slow
def test_nonfinite_loss_stops_with_step(tmp_path):
  c = _config(2)
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 1e30  # diverges within a few steps
  with pytest.raises(trainer.NonFiniteLossError, match=r'at step \d+') as e:
    trainer.train(c, tmp_path, progress_bars=False)
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert all(s < e.value.step for s in steps)
