"""The `animals10` TFDS builder, built from a fake manual-download tree."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data
from data import config as config_lib
from data import testing
from data.sources import tfds_animals10


@pytest.fixture(scope='module')
def manual_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('manual')
  rng = np.random.default_rng(0)
  testing.write_good(root / 'raw-img' / 'cane', 6, rng, prefix='dog')
  testing.write_good(root / 'raw-img' / 'cavallo', 5, rng, prefix='horse')
  testing.write_good(root / 'raw-img' / 'gatto', 2, rng, prefix='cat')
  (root / 'raw-img' / 'cane' / 'broken.jpg').write_bytes(b'\xff\xd8\xff garbage')
  from PIL import Image
  Image.fromarray(testing.random_image(rng, 20, 30)).convert('CMYK').save(
      root / 'raw-img' / 'cavallo' / 'cmyk.jpg')
  return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  monkeypatch.delenv('ANIMALS10_DIR', raising=False)


def test_tfds_load_with_manual_dir(manual_dir, tmp_path):
  ds, info = tfds.load('animals10', split='train', data_dir=str(tmp_path / 'tfds'),
                       with_info=True, download_and_prepare_kwargs={
                           'download_config': tfds.download.DownloadConfig(
                               manual_dir=str(manual_dir))})
  assert info.features['label'].names == sorted(info.features['label'].names)
  assert 'horse' in info.features['label'].names and info.splits['train'].num_examples == 6 + 5 + 1 + 2
  names = info.features['label'].names
  examples = list(tfds.as_numpy(ds))
  by_file = {ex['file_name'].decode(): ex for ex in examples}
  assert 'cane/broken.jpg' not in by_file  # Unusable: skipped.
  assert names[by_file['cane/dog_000.jpg']['label']] == 'dog'
  cmyk = by_file['cavallo/cmyk.jpg']  # Stored as PIL's RGB decoding.
  assert cmyk['image'].shape == (20, 30, 3) and names[cmyk['label']] == 'horse'
  assert all(ex['image'].ndim == 3 and ex['image'].shape[-1] == 3 for ex in examples)


def test_missing_manual_dir_explains_what_to_do(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(Exception, match='kaggle.com/datasets/alessiocorrado99/animals10'):
    tfds_animals10.build(tmp_path / 'empty', tmp_path / 'tfds')


def test_source_tfds_goes_through_restructuring(manual_dir):
  c = config_lib.get_config()
  c.source, c.path = 'tfds', str(manual_dir)
  c.images_per_class, c.validation_fraction, c.image_size = 4, 0.25, 32
  info = data.prepare(c, log=lambda s: None)
  assert info.kind == 'tfds' and info.class_names == ('dog', 'horse')
  assert info.num_examples == {'train': 6, 'validation': 2, 'test': 2 + 2}
  b = next(data.train_batches(info, c, batch_size=2, seed=0))
  assert b['image'].shape == (2, 32, 32, 3)


def test_build_cli(manual_dir, tmp_path, capsys):
  from data import tfds_build
  assert tfds_build.main(['--manual_dir', str(manual_dir / 'raw-img'),
                          '--data_dir', str(tmp_path / 'tfds')]) == 0
  assert 'Built animals10 1.0.0' in capsys.readouterr().out
  assert (tmp_path / 'tfds' / 'animals10' / '1.0.0' / 'dataset_info.json').exists()
