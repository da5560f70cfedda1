"""configs/animals10.py: the ten Animals-10 classes, found in Kaggle's layout or refused naming the
missing folder, and trained end to end on a 10-class synthetic set (a 10-logit softmax head)."""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import animals10
from configs import dog_horse_299
from configs import validate
from data import config as data_config
from data import dataset
from data import testing
from data.sources import animals10 as animals10_source
from data.sources import synthetic
from inception import transfer
from inception.tools import evaluate
from inception.tools import predict
from inception.train import run_record
from inception.train import trainer

ITALIAN = ('cane', 'cavallo', 'elefante', 'farfalla', 'gallina', 'gatto', 'mucca', 'pecora',
           'ragno', 'scoiattolo')


@pytest.fixture(autouse=True)
def _no_real_data(tmp_path, monkeypatch):
  """Nothing of the machine's: an empty cache, no $ANIMALS10_DIR, no kagglehub cache/download."""
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setenv('KAGGLEHUB_CACHE', str(tmp_path / 'kagglehub'))
  monkeypatch.delenv('ANIMALS10_DIR', raising=False)
  monkeypatch.setattr(animals10_source, '_kagglehub_download', lambda log: None)


def test_config_is_ten_classes_with_the_better_recipe():
  c = animals10.get_config()
  validate.validate(c, device_count=1)
  d = c.data
  assert d.source == 'animals10' and len(d.classes) == 10
  # Every Animals-10 class once, labels in the order of Kaggle's (sorted) Italian folders.
  assert tuple(animals10_source.ENGLISH_TO_ITALIAN[n] for n in d.classes) == ITALIAN
  assert (d.images_per_class, d.validation_fraction, d.test_per_class) == (500, 0.1, -1)
  assert d.synthetic.num_classes == 10 and d.fallback_to_synthetic
  # The better recipe's choices, as configs/dog_horse_299.py has them.
  best = dog_horse_299.get_config()
  for key in ('data.preprocess', 'data.augment.enabled', 'data.image_size', 'model.cut',
              'model.head', 'model.dropout', 'model.dense_units', 'model.weights',
              'optimizer.name', 'optimizer.lr', 'optimizer.param_rules', 'train.epochs',
              'train.batch_size', 'train.feature_cache'):
    section, *rest = key.split('.')
    a, b = c[section], best[section]
    for k in rest:
      a, b = a[k], b[k]
    assert a == b, key
  assert transfer.num_outputs(len(d.classes)) == 10  # Softmax.
  assert 'python train.py --config configs/animals10.py' in animals10.__doc__
  assert 'not run on the real ten-class data' in animals10.__doc__
  assert animals10.get_config('images_per_class=1446').data.images_per_class == 1446
  with pytest.raises(ValueError, match="Unknown config arg 'images'"):
    animals10.get_config('images=1446')


def test_synthetic_num_classes_is_validated_and_the_default_unchanged():
  assert data_config.get_config().synthetic.num_classes == 2
  assert synthetic.class_names(2) == ('stripes_000', 'stripes_090')
  assert len(set(synthetic.class_names(10))) == 10
  for bad in (1, 11):
    d = data_config.get_config()
    d.synthetic.num_classes = bad
    with pytest.raises(ValueError, match=rf'data.synthetic.num_classes={bad} must be in \[2, 10\]'):
      data_config.validate(d)


def test_kaggle_layout_gives_the_ten_classes(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  for name in ITALIAN:
    testing.write_good(tmp_path / 'raw-img' / name, 2, rng, size=(16, 16))
  monkeypatch.setenv('ANIMALS10_DIR', str(tmp_path))
  src = dataset.resolve_source(animals10.get_config().data, log=lambda _: None)
  assert not src.is_synthetic and src.kind == 'animals10'
  assert src.classes == tuple(zip(animals10.CLASSES, ITALIAN))  # (English name, folder).
  # More images per class than a class has: refused at start-up, naming the class.
  with pytest.raises(ValueError, match=r"class 'dog' .*cane\) has 2 usable images .*use at most 2"):
    dataset.prepare(animals10.get_config('images_per_class=3').data, log=lambda _: None)


@pytest.mark.parametrize('how', ['ANIMALS10_DIR', 'data.path'])
def test_a_missing_class_folder_is_an_error_naming_it(tmp_path, monkeypatch, how):
  """The stand-in photos' layout (cane/ and cavallo/ only) is refused, never substituted."""
  rng = np.random.default_rng(0)
  testing.write_good(tmp_path / 'raw-img' / 'cane', 3, rng)
  testing.write_good(tmp_path / 'raw-img' / 'cavallo', 3, rng)
  c = animals10.get_config()
  if how == 'ANIMALS10_DIR':
    monkeypatch.setenv('ANIMALS10_DIR', str(tmp_path))
  else:
    c.data.path = str(tmp_path)
  with pytest.raises(FileNotFoundError,
                     match=r"has no folder elefante/ for class 'elephant'; it has: cane, cavallo"):
    dataset.prepare(c.data, log=lambda _: None)
  assert not (tmp_path / 'cache' / 'synthetic').exists()  # Nothing generated in its place.


def test_the_fallback_without_data_is_ten_synthetic_classes():
  c = animals10.get_config()
  c.data.synthetic.images_per_class, c.data.synthetic.test_per_class = 2, 0
  c.data.synthetic.image_size = 32
  src = dataset.resolve_source(c.data, log=lambda _: None)
  assert src.is_synthetic and 'fell back to synthetic' in src.description
  assert [n for n, _ in src.classes] == list(synthetic.class_names(10))


def _small_synthetic(config):
  """configs/animals10.py on 5+1 synthetic images per class of 10 (4 train, 1 validation, 1 test
  each), a random backbone cut at its stem at 75 px; the head, loss and recipe stay the config's."""
  d = config.data
  d.source = 'synthetic'
  d.synthetic.images_per_class, d.synthetic.test_per_class = 5, 1
  d.synthetic.image_size = 48
  d.image_size = 75
  config.model.weights = 'random'
  config.model.cut = 'stem'
  config.train.epochs = 2
  config.checkpoint.async_save = False
  return config


def test_trains_ten_classes_end_to_end_and_evaluates_from_the_workdir(tmp_path, monkeypatch):
  c = _small_synthetic(animals10.get_config())
  wd = tmp_path / 'run'
  logs = []
  summary = trainer.train(c, wd, progress_bars=False, log=logs.append)
  assert summary['synthetic'] is True and summary['steps'] == 4  # 40 train images / batch 20.
  assert any(m.startswith('Feature cache: on') for m in logs), logs  # The recipe's cache ran.
  for split, n in (('final_validation', 10), ('test', 10)):
    s = summary[split]
    assert s['count'] == n and math.isfinite(s['loss']) and 0 <= s['accuracy'] <= 1, split
  assert all(math.isfinite(summary['final_train'][k]) for k in ('loss', 'accuracy'))

  names = synthetic.class_names(10)
  record = run_record.load(wd)
  assert record.class_names == names and record.is_synthetic
  assert json.loads((wd / 'run.json').read_text())['class_names'] == list(names)
  for split in ('validation', 'test'):
    conf = json.loads((wd / f'confusion_{split}.json').read_text())
    assert conf['class_names'] == list(names)
    matrix = np.array(conf['matrix'])
    assert matrix.shape == (10, 10) and matrix.sum() == 10
    assert (matrix.sum(axis=1) == 1).all()  # One image of each class.

  # Eval and predict from the workdir alone: no data preparation, no pretrained weights.
  def refuse(*a, **k):
    raise AssertionError('eval/predict prepared data or loaded pretrained weights')
  monkeypatch.setattr(transfer, 'load_pretrained', refuse)
  monkeypatch.setattr(trainer, 'prepare_data', refuse)
  restored = evaluate.restore(wd, 'latest', log=lambda _: None)
  kernel = jax.device_get(restored.variables)['params']['head']['logits']['kernel']
  assert kernel.shape == (1024, 10)  # Dense(1024) -> 10 logits: the softmax head.
  test = evaluate.evaluate(wd, split='test', log=lambda _: None)
  assert test['count'] == 10 and test['accuracy'] == pytest.approx(summary['test']['accuracy'])
  assert test['loss'] == pytest.approx(summary['test']['loss'], rel=1e-5)
  rows = predict.predict(wd, [str(Path(record.data['root']) / 'test')], log=lambda _: None)
  assert len(rows) == 10
  for r in rows:
    probs = [r[f'p_{n}'] for n in names]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5) and r['class'] == names[int(np.argmax(probs))]
