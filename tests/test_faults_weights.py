"""Bad weights files given as config.model.weights=<path> (adds to tests/test_weights.py, which
covers hashes, TorchScript pickles, truncation and other networks' h5 files)."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest

from inception import transfer
from inception import weights


class _Exploit:
  """Unpickling this runs `touch <marker>`: a weights file must never be unpickled."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_npz_with_a_pickled_object_is_refused_without_running_it(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.npz'
  arr = np.empty(1, dtype=object)
  arr[0] = _Exploit(marker)
  np.savez(path, **{'params/a/kernel': arr})
  with pytest.raises(weights.WeightsError, match='evil.npz: not a readable converted weights'):
    weights.load(str(path))
  assert not marker.exists()


@pytest.mark.parametrize('content', [b'', b'PK\x03\x04' + b'\0' * 40, b'not a zip at all'])
def test_empty_or_garbage_file_is_refused(tmp_path, content):
  path = tmp_path / 'w.npz'
  path.write_bytes(content)
  with pytest.raises(weights.WeightsError, match='w.npz: not a readable converted weights'):
    weights.load(str(path))


def test_converted_file_of_another_architecture_is_refused_naming_the_variables(tmp_path):
  path = tmp_path / 'other.npz'
  flat = {'params/conv1/kernel': np.zeros((3, 3, 3, 8), np.float32),
          'batch_stats/conv1/mean': np.zeros((8,), np.float32)}
  weights.save_converted(flat, {'source': 'someone else', 'mixed10_pool': 'avg'}, path)
  with pytest.raises(weights.WeightsError, match=r'other.npz: converted variables do not match '
                     r"InceptionV3 .* missing \['batch_stats/.*unexpected \['batch_stats/conv1"):
    config = ml_collections.ConfigDict({'model': {'backbone': 'inception_v3',
                                                  'weights': str(path), 'cut': 'stem'}})
    transfer.load_pretrained(config, log=lambda s: None)


def test_converted_file_without_pool_metadata_is_refused(tmp_path):
  path = tmp_path / 'nopool.npz'
  weights.save_converted({'params/a/kernel': np.zeros((2,), np.float32)}, {'source': 'x'}, path)
  with pytest.raises(weights.WeightsError, match=r'nopool.npz: metadata mixed10_pool=None'):
    weights.load(str(path))
