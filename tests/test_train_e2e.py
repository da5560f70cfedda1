"""End to end on small data: train -> checkpoint -> resume -> eval -> predict, and the run's
record (eval and predict from the workdir alone, never on other data)."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest


from configs import smoke  # pylint: disable=g-import-not-at-top
from data import testing
from inception.train import actions
from inception.train import checkpoints
from inception.tools import evaluate
from inception.tools import predict
from inception.train import reporting
from inception.train import run_record
from inception.train import xla_options
from inception.train import trainer
from inception import transfer

ROOT = Path(__file__).resolve().parent.parent
LAST_LINE = re.compile(r'^(.+) @ step (\d+) \((\w+)\): accuracy (\S+) loss (\S+) \(n=(\d+)\)$')


pytestmark = pytest.mark.usefixtures('module_cache')


def _config(epochs=2):
  c = smoke.get_config(f'epochs={epochs},cut=stem')
  c.optimizer.lr = 3e-3
  return c


def _model_bits(workdir, checkpoint='latest', log=print):
  r = evaluate.restore(workdir, checkpoint, log=log)
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(r.variables))
  return {jax.tree_util.keystr(p): np.asarray(v).view(np.uint32) for p, v in leaves}, r.meta


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
  a, meta_a = _model_bits(root / 'full')
  b, meta_b = _model_bits(root / 'resumed')
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
               'confusion_validation.json', 'run.json', 'data_manifest.json', 'summary.json'):
    assert (wd / name).is_file(), name
  record = run_record.load(wd)
  assert record.is_synthetic and record.class_names == ('stripes_000', 'stripes_090')
  assert record.config.to_dict() == _config(2).to_dict()  # Tuples come back as tuples.
  assert record.weights['weights'] == 'random'
  # The XLA options the run compiled with, and why (this host's CPU kind).
  assert record.xla_options == xla_options.choose().to_json()
  assert record.xla_options['platform'] == 'cpu' and record.xla_options['options'] == (
      xla_options.CANDIDATES[record.xla_options['name']])
  assert record.manifest() == json.loads(
      (Path(record.data['root']) / 'manifest.json').read_text())
  conf = json.loads((wd / 'confusion_validation.json').read_text())
  assert conf['count'] == full['final_validation']['count'] == 8
  assert conf['accuracy'] == pytest.approx(full['final_validation']['accuracy'])
  records = [json.loads(l) for l in (wd / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records if r['split'] == 'validation'] == [1, 2]
  assert sorted(p.name for p in (wd / 'tensorboard').iterdir()) == [
      'train', 'train_epoch', 'validation']
  from inception.train import reporting  # pylint: disable=g-import-not-at-top
  events = reporting.read_events(next((wd / 'tensorboard' / 'validation').iterdir()))
  assert sorted({(s, t) for s, t, _ in events}) == [(3, 'accuracy'), (3, 'loss'),
                                                     (6, 'accuracy'), (6, 'loss')]
  assert sorted(int(p.name) for p in (wd / 'checkpoints').iterdir() if p.name.isdigit()) == [3, 6]
  # best/ holds the validation evaluation that checkpoint.best_metric picks, and says so.
  val = [r for r in reporting.read_metrics(wd) if r['split'] == 'validation']
  want = checkpoints.best_of(val, 'accuracy_then_loss')
  assert [int(p.name) for p in (wd / 'best').iterdir() if p.name.isdigit()] == [want['step']]
  meta = evaluate.restore(wd, 'best').meta
  assert meta['best'] == {'accuracy': want['accuracy'], 'loss': want['loss'],
                          'epoch': want['epoch'], 'step': want['step'],
                          'metric': 'accuracy_then_loss'}
  assert json.loads((wd / 'summary.json').read_text())['best_validation']['epoch'] == \
      want['epoch']


@pytest.mark.slow
def test_rerun_of_finished_run_is_a_noop(runs):
  root, full, _, _ = runs
  again = trainer.train(_config(2), root / 'full', progress_bars=False)
  assert again['resumed_from_step'] == 6 and again['steps'] == 6
  assert again['final_validation'] == full['final_validation']


@pytest.mark.slow
def test_evaluate_and_predict_from_the_workdir_alone(runs, tmp_path):
  root, full, _, _ = runs
  wd = root / 'full'
  logs = []
  val = evaluate.evaluate(wd, checkpoint='latest', split='validation', log=logs.append)
  assert val['accuracy'] == pytest.approx(full['final_validation']['accuracy'])
  assert val['loss'] == pytest.approx(full['final_validation']['loss'], rel=1e-5)
  assert val['trained_on_synthetic_data'] is True and val['data']['kind'] == 'split'
  assert any('SYNTHETIC DATA' in m for m in logs)  # A synthetic run says so, every time.
  # The last line: '<what> @ step S (<checkpoint>): accuracy A loss L (n=N)', full precision.
  what, step, ck, acc, loss, n = LAST_LINE.match(logs[-1]).groups()
  assert (what, int(step), ck, int(n)) == ('validation', 6, 'latest', 8)
  assert float(acc) == val['accuracy'] and float(loss) == val['loss']
  saved = json.loads((wd / 'eval' / 'validation_latest_step6.json').read_text())
  assert saved['loss'] == val['loss'] and saved['count'] == 8 and saved['step'] == 6

  test = evaluate.evaluate(wd, checkpoint='3', split='test', log=logs.append)
  assert test['step'] == 3 and test['count'] == 8
  assert (wd / 'eval' / 'test_step3.json').is_file()

  record = run_record.load(wd)
  test_dir = Path(record.data['root']) / 'test'
  folder = evaluate.evaluate(wd, checkpoint='latest', eval_dir=str(test_dir), log=logs.append)
  assert folder['count'] == 8 and folder['data']['kind'] == 'folder'
  assert folder['accuracy'] == pytest.approx(full['test']['accuracy'])
  # A second folder gets its own file: evaluations of different data never overwrite.
  other = tmp_path / 'other'
  for name in record.class_names:
    shutil.copytree(test_dir / name, other / name, symlinks=False)
    next(p for p in sorted((other / name).iterdir())).unlink()
  evaluate.evaluate(wd, checkpoint='latest', eval_dir=str(other), log=logs.append)
  folders = sorted(p.name for p in (wd / 'eval').glob('folder-*_latest_step6.json'))
  assert len(folders) == 2, folders
  counts = sorted(json.loads((wd / 'eval' / f).read_text())['count'] for f in folders)
  assert counts == [6, 8]

  out = tmp_path / 'preds.csv'
  rows = predict.predict(wd, [str(test_dir)], output=str(out), log=logs.append)
  assert len(rows) == 8
  with open(out) as f:
    csv_rows = list(csv.DictReader(f))
  names = record.class_names
  assert list(csv_rows[0]) == ['path', 'class', 'probability'] + [f'p_{n}' for n in names]
  assert [r['path'] for r in csv_rows] == [r['path'] for r in rows]
  about = json.loads(Path(f'{out}.json').read_text())
  assert about['trained_on_synthetic_data'] is True and about['step'] == 6
  for r in rows:
    probs = [r[f'p_{n}'] for n in names]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert r['class'] == names[int(np.argmax(probs))]
  # The folder evaluation and the predictions agree on which files are right.
  right = sum(Path(r['path']).parent.name == r['class'] for r in rows)
  assert right / 8 == pytest.approx(folder['accuracy'])
  with pytest.raises(FileNotFoundError, match='is not the workdir of a trained run'):
    evaluate.evaluate(tmp_path / 'empty')


@pytest.mark.slow
def test_a_config_may_change_only_eval_keys(runs):
  wd = runs[0] / 'full'
  c = _config(2)
  c.eval.batch_size = 4
  assert evaluate.evaluate(wd, config=c, log=lambda _: None)['eval_batch_size'] == 4
  c.model.cut = 'mixed0'
  c.data.image_size = 80
  with pytest.raises(run_record.ConfigMismatchError,
                     match=r"data.image_size: run 75, --config 80; model.cut: run 'stem', "
                           r"--config 'mixed0'\. Leave --config out"):
    evaluate.evaluate(wd, config=c, log=lambda _: None)


def _animals10_tree(root: Path) -> Path:
  """Real-data layout (raw-img/cane, raw-img/cavallo) of small random photos."""
  rng = np.random.default_rng(0)
  testing.write_good(root / 'raw-img' / 'cane', 14, rng, prefix='dog')
  testing.write_good(root / 'raw-img' / 'cavallo', 14, rng, prefix='horse')
  return root


@pytest.fixture(scope='module')
def real_run(tmp_path_factory):
  """A run on Animals-10 found through $ANIMALS10_DIR (as a user trains on the real data)."""
  tree = _animals10_tree(tmp_path_factory.mktemp('animals10'))
  c = _config(1)
  c.data.source = 'animals10'
  c.data.images_per_class = 8
  wd = tmp_path_factory.mktemp('real') / 'run'
  old = os.environ.get('ANIMALS10_DIR')
  os.environ['ANIMALS10_DIR'] = str(tree)
  try:
    summary = trainer.train(c, wd, progress_bars=False, log=lambda _: None)
  finally:
    if old is None:
      del os.environ['ANIMALS10_DIR']
    else:
      os.environ['ANIMALS10_DIR'] = old
  return wd, summary


@pytest.mark.slow
def test_eval_without_the_data_variables_reads_the_recorded_split(real_run, monkeypatch):
  wd, summary = real_run
  assert summary['synthetic'] is False
  monkeypatch.delenv('ANIMALS10_DIR', raising=False)
  logs = []
  val = evaluate.evaluate(wd, split='validation', log=logs.append)
  assert val['count'] == summary['final_validation']['count'] == 4
  assert val['accuracy'] == summary['final_validation']['accuracy']
  assert val['loss'] == pytest.approx(summary['final_validation']['loss'], rel=1e-5)
  assert val['trained_on_synthetic_data'] is False
  assert not any('SYNTHETIC' in m for m in logs)
  test = evaluate.evaluate(wd, split='test', log=logs.append)
  assert test['count'] == summary['test']['count'] == 12
  assert test['accuracy'] == summary['test']['accuracy']


@pytest.mark.slow
def test_a_missing_or_changed_file_of_the_split_is_an_error_naming_it(real_run, tmp_path):
  wd, _ = real_run
  manifest = run_record.load(wd).manifest()
  root = Path(run_record.load(wd).data['root'])
  # A moved subset: --data_root; its files are still checked.
  moved = tmp_path / 'moved'
  shutil.copytree(root, moved, symlinks=False)
  assert evaluate.evaluate(wd, split='validation', data_root=str(moved),
                           log=lambda _: None)['count'] == 4
  changed, missing = (moved / e['path'] for e in manifest['splits']['validation'][:2])
  original = changed.read_bytes()
  changed.write_bytes(original[:-10] + b'0123456789')
  with pytest.raises(ValueError, match=f'{re.escape(str(changed))} .*changed since the run'):
    evaluate.evaluate(wd, split='validation', data_root=str(moved), log=lambda _: None)
  changed.write_bytes(original)
  missing.unlink()
  with pytest.raises(FileNotFoundError, match=f'{re.escape(str(missing))} .*cannot be read'):
    evaluate.evaluate(wd, split='validation', data_root=str(moved), log=lambda _: None)


@pytest.mark.slow
def test_copied_workdir_predicts_with_an_empty_cache_no_weights_and_3_devices(runs, tmp_path):
  """On another machine: the workdir alone, no weights cache, another device count (CLI)."""
  root, full, _, _ = runs
  wd = tmp_path / 'copied'
  shutil.copytree(root / 'full', wd)
  test_dir = Path(run_record.load(wd).data['root']) / 'test'
  env = dict(os.environ, INCEPTION_FLAX_CACHE=str(tmp_path / 'empty_cache'),
             PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=3')
  env.pop('ANIMALS10_DIR', None)
  run = lambda *a: subprocess.run([sys.executable, 'train.py', f'--workdir={wd}', *a,
                                   '--noprogress'], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=300)
  r = run('--mode=eval', f'--eval_dir={test_dir}')
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  assert 'eval.batch_size 8 -> 9: a multiple of the 3 devices' in r.stdout
  what, step, ck, acc, _, n = LAST_LINE.match(lines[-1]).groups()
  assert (what, step, ck, n) == (f'folder {test_dir}', '6', 'latest', '8')
  assert float(acc) == pytest.approx(full['test']['accuracy'])
  r = run('--mode=predict', f'--inputs={test_dir}', f'--output={tmp_path / "p.csv"}')
  assert r.returncode == 0, r.stderr[-3000:]
  assert len((tmp_path / 'p.csv').read_text().splitlines()) == 9
  assert not (tmp_path / 'empty_cache' / 'weights').exists()
  # A --config that changes the model is refused, naming the key (exit 2, as bad configs).
  r = run('--mode=eval', '--config=configs/smoke.py:cut=mixed0')
  assert r.returncode == 2 and "model.cut: run 'stem', --config 'mixed0'" in r.stderr, r.stderr


@pytest.mark.slow
def test_eval_and_predict_never_load_pretrained_weights(runs, monkeypatch):
  def refuse(*a, **k):
    raise AssertionError('eval/predict loaded pretrained weights')
  monkeypatch.setattr(transfer, 'load_pretrained', refuse)
  monkeypatch.setattr(trainer, 'prepare_data', refuse)
  wd = runs[0] / 'full'
  test_dir = Path(run_record.load(wd).data['root']) / 'test'
  assert evaluate.evaluate(wd, split='test', log=lambda _: None)['count'] == 8
  assert len(predict.predict(wd, [str(test_dir)], log=lambda _: None)) == 8


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back(runs, tmp_path):
  root, _, _, _ = runs
  wd = tmp_path / 'copy'
  shutil.copytree(root / 'full', wd)
  for f in (wd / 'checkpoints' / '6' / 'model').rglob('*'):
    if f.is_file():
      f.write_bytes(b'garbage')
  messages = []
  bits, meta = _model_bits(wd, log=messages.append)
  assert meta['step'] == 3
  assert any('checkpoints/6 is damaged' in m for m in messages), messages


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
  with pytest.raises(actions.NonFiniteLossError, match=r'at step \d+') as e:
    trainer.train(c, tmp_path, progress_bars=False)
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert all(s < e.value.step for s in steps)


@pytest.mark.slow
def test_misclassified_report_from_the_workdir_alone(runs):
  from inception.tools import misclassified  # pylint: disable=g-import-not-at-top
  root, full, _, _ = runs
  wd = root / 'full'
  errors = misclassified.run(wd, split='test', log=lambda _: None)
  assert len(errors) == round((1 - full['test']['accuracy']) * 8)
  with open(wd / 'misclassified_test.csv') as f:
    assert [r['path'] for r in csv.DictReader(f)] == [e['path'] for e in errors]
  assert (wd / 'misclassified_test.png').is_file()
