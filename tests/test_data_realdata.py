"""The seed recipe's subset from the real photos in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

import data
from data import config as config_lib
from data.sources import animals10

_REPO = pathlib.Path(__file__).resolve().parents[1]
_CANDIDATES = (os.environ.get('ANIMALS10_DIR', ''),
               str(_REPO.parent / 'shared' / 'data' / 'animals10-standin'))
_FOUND = next((c for c in _CANDIDATES if c and animals10.find_raw_img(c)), None)

pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.skipif(
    _FOUND is None, reason='no Animals-10 photos: set $ANIMALS10_DIR or provide '
    '../shared/data/animals10-standin/raw-img/{cane,cavallo}')]


def test_seed_subset_450_50_and_first_batch(tmp_path, monkeypatch):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  c = config_lib.get_config()  # The seed recipe: dog/horse, 500 per class, 0.1, 150 px.
  c.path = _FOUND
  c.cache_decoded_mib = 0  # Decode only what the first batch needs.
  info = data.prepare(c, log=lambda s: None)
  assert info.kind == 'animals10' and not info.is_synthetic and info.banner == ''
  assert info.class_names == ('dog', 'horse')
  assert info.num_examples['train'] == 900 and info.num_examples['validation'] == 100
  assert info.num_examples['test'] > 0
  assert data.steps_per_epoch(info, 20) == 45
  b = next(data.train_batches(info, c, batch_size=20, seed=0))
  assert b['image'].shape == (20, 150, 150, 3) and 0.0 <= b['image'].min()
  assert b['image'].max() <= 1.0 and set(np.unique(b['label'])) <= {0, 1}
  # Same arguments again: the manifest (and so the split) is identical.
  assert data.prepare(c, log=lambda s: None).manifest_sha256 == info.manifest_sha256
