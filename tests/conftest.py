"""Fixtures shared by the test modules."""

import os

import pytest


@pytest.fixture(scope='module')
def module_cache(tmp_path_factory):
  """$INCEPTION_FLAX_CACHE pointed at a fresh folder for one test module (data sets, features
  and synthetic data are prepared there, shared by the module's runs); restored afterwards."""
  old = os.environ.get('INCEPTION_FLAX_CACHE')
  os.environ['INCEPTION_FLAX_CACHE'] = str(tmp_path_factory.mktemp('cache'))
  yield os.environ['INCEPTION_FLAX_CACHE']
  if old is None:
    del os.environ['INCEPTION_FLAX_CACHE']
  else:
    os.environ['INCEPTION_FLAX_CACHE'] = old
