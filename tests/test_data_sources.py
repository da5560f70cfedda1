"""Config validation, source resolution, fallbacks and the synthetic data set."""

from __future__ import annotations

import json

import numpy as np
import pytest

import data
from data import config as config_lib
from data.sources import animals10
from data.sources import synthetic
from data import testing


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setenv('KAGGLEHUB_CACHE', str(tmp_path / 'no-kagglehub'))
  monkeypatch.delenv('ANIMALS10_DIR', raising=False)


def _small_synthetic(c):
  c.synthetic.images_per_class, c.synthetic.test_per_class, c.synthetic.image_size = 10, 2, 48
  return c


@pytest.mark.parametrize('key,value,match', [
    ('preprocess', 'imagenet', r"config.data.preprocess='imagenet' is not valid; valid: rescale, "),
    ('source', 'kaggle', r"config.data.source='kaggle' is not valid"),
    ('resize_method', 'cubic', r'config.data.resize_method'),
    ('augment.fill_mode', 'mirror', r'config.data.augment.fill_mode'),
    ('validation_fraction', 1.5, r'config.data.validation_fraction=1.5 must be in'),
    ('validation_fraction', float('nan'), r'config.data.validation_fraction is NaN'),
    ('images_per_class', -1, r'config.data.images_per_class=-1'),  # 0 = every image.
    ('augment.rotation_range', float('nan'), r'config.data.augment.rotation_range is NaN'),
    ('num_parallel_calls', 0, r'config.data.num_parallel_calls=0'),
    ('path', '/no/such/dir', r"config.data.path='/no/such/dir' does not exist"),
])
def test_validate_names_key_value_and_choices(key, value, match):
  c = config_lib.get_config()
  config_lib.validate(c)
  obj, *rest = key.split('.')
  if rest:
    c[obj][rest[0]] = value
  else:
    c[key] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)


def test_animals10_search_order(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  a, b = tmp_path / 'a', tmp_path / 'b' / 'raw-img'
  for root in (a / 'raw-img', b):
    testing.write_good(root / 'cane', 1, rng)
  kh = tmp_path / 'no-kagglehub' / 'datasets' / animals10.KAGGLE_HANDLE / 'versions' / '3'
  testing.write_good(kh / 'raw-img' / 'cavallo', 1, rng)
  log = []
  assert animals10.find_animals10('', download=False) == (kh / 'raw-img', 'kagglehub cache')
  monkeypatch.setenv('ANIMALS10_DIR', str(b))  # raw-img itself is accepted too.
  assert animals10.find_animals10('', log=log.append) == (b, '$ANIMALS10_DIR')
  assert animals10.find_animals10(str(a)) == (a / 'raw-img', 'data.path')
  with pytest.raises(FileNotFoundError, match=r"data.path=.* holds no Animals-10.*kaggle"):
    animals10.find_animals10(str(tmp_path))
  monkeypatch.setenv('ANIMALS10_DIR', str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError, match=r'\$ANIMALS10_DIR=.* holds no Animals-10'):
    animals10.find_animals10('')


def test_fallback_to_synthetic_is_loud_and_recorded():
  c = _small_synthetic(config_lib.get_config())  # source='animals10', nothing on the machine.
  logs = []
  info = data.prepare(c, log=logs.append)
  assert info.is_synthetic and info.kind == 'synthetic'
  assert 'SYNTHETIC DATA' in info.banner and 'fell back to synthetic' in info.banner
  assert info.banner.splitlines()[0].startswith('!!!')
  assert info.num_examples == {'train': 18, 'validation': 2, 'test': 4}
  record = json.loads(json.dumps(info.to_json()))
  assert record['is_synthetic'] and record['class_names'] == ['stripes_000', 'stripes_090']
  assert record['manifest_sha256'] == info.manifest_sha256
  c.fallback_to_synthetic = False
  with pytest.raises(FileNotFoundError, match='Animals-10 was not found.*ANIMALS10_DIR'):
    data.prepare(c)


def test_explicit_path_is_never_replaced_by_synthetic(tmp_path):
  c = _small_synthetic(config_lib.get_config())
  c.path = str(tmp_path / 'missing')
  with pytest.raises(ValueError, match='does not exist'):
    data.prepare(c)
  (tmp_path / 'empty').mkdir()
  c.path = str(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='holds no Animals-10'):
    data.prepare(c)


def test_prepare_is_a_noop_the_second_time(tmp_path):
  c = _small_synthetic(config_lib.get_config())
  c.source = 'synthetic'
  first = data.prepare(c, log=lambda s: None)
  logs = []
  second = data.prepare(c, log=logs.append)
  assert first == second
  assert any('nothing to do' in line for line in logs)


def test_synthetic_is_deterministic_and_class_dependent(tmp_path):
  cfg = _small_synthetic(config_lib.get_config()).synthetic
  a = synthetic.generate(cfg, tmp_path / 'a')
  b = synthetic.generate(cfg, tmp_path / 'b')
  ha, hb = testing.tree_hashes(a), testing.tree_hashes(b)
  assert ha == hb and len(ha) == 2 * 12 + 1
  cfg.seed = 1
  assert testing.tree_hashes(synthetic.generate(cfg, tmp_path / 'c')) != ha
  # The stripe orientation is the class: horizontal stripes vary along y, vertical along x.
  rng = np.random.default_rng(0)
  for label in (0, 1):
    imgs = np.stack([synthetic.make_image(rng, label, 2, 64).astype(float).mean(-1)
                     for _ in range(20)])
    dy = np.abs(np.diff(imgs, axis=1)).mean()
    dx = np.abs(np.diff(imgs, axis=2)).mean()
    assert (dy > dx) if label == 0 else (dx > dy)
