"""The Keras sources: keras-applications' InceptionV3 legacy h5 files (`..._notop.h5`, and the
with-top one with `predictions`), downloaded from the Keras host when reachable, md5-checked and
converted."""

from __future__ import annotations

import logging
import pathlib

import numpy as np

from inception import paths
from inception.models import inception_v3 as model_lib
from inception.weights import keras_h5
from inception.weights import layout
from inception.weights.store import DownloadError, WeightsError

log = logging.getLogger(__name__)

KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/'
KERAS_FILES = {  # name -> (file name, md5 published by keras-applications)
    'keras': ('inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5',
              'bcbd6486424b2319ff4ef7d526e38f63'),
    'keras_top': ('inception_v3_weights_tf_dim_ordering_tf_kernels.h5',
                  '9a0d58056eeedaa3f26cb7ebd46da564'),
}
KNOWN_MD5 = dict(KERAS_FILES.values())  # file name -> published md5


def convert_keras_h5(path: pathlib.Path) -> tuple[dict[str, np.ndarray], bool]:
  """A Keras InceptionV3 legacy h5 -> (flat float32 variables, include_top).

  The k-th `conv2d*` and k-th `batch_normalization*` layer (by numeric suffix, i.e. creation
  order) are unit `UNIT_PATHS[k]`; `predictions` (if present) is the top.
  """
  name = str(path)
  layers = keras_h5.read_layers(path)
  convs = keras_h5.layers_of_kind(layers, 'conv2d')
  bns = keras_h5.layers_of_kind(layers, 'batch_normalization')
  n = len(model_lib.UNIT_PATHS)
  if len(convs) != n or len(bns) != n:
    raise WeightsError(f'{name}: found {len(convs)} conv2d and {len(bns)} batch_normalization '
                       f'layers, expected {n} of each: not a Keras InceptionV3 weights file')
  flat, origin = {}, {}
  for conv, bn, (block, unit) in zip(convs, bns, model_lib.UNIT_PATHS):
    cw, bw = layers[conv], layers[bn]
    if set(cw) != {'kernel'}:
      raise WeightsError(f'{name}: layer {conv} ({block}/{unit}) has weights {sorted(cw)}, '
                         'expected only a kernel (InceptionV3 convs have no bias)')
    if set(bw) != {'beta', 'moving_mean', 'moving_variance'}:
      raise WeightsError(f'{name}: layer {bn} ({block}/{unit}) has weights {sorted(bw)}, '
                         'expected beta, moving_mean, moving_variance (BatchNorm scale=False)')
    entries = layout.unit_entries(block, unit, cw['kernel'], bw['beta'], bw['moving_mean'],
                                  bw['moving_variance'])
    flat.update(entries)
    origin.update({k: conv if k.endswith('kernel') else bn for k in entries})
  include_top = 'predictions' in layers
  if include_top:
    top = layers['predictions']
    if set(top) != {'kernel', 'bias'}:
      raise WeightsError(f'{name}: layer predictions has weights {sorted(top)}, expected '
                         'kernel and bias')
    flat['params/predictions/kernel'] = top['kernel']
    flat['params/predictions/bias'] = top['bias']
    origin.update({'params/predictions/kernel': 'predictions',
                   'params/predictions/bias': 'predictions'})
  return layout.check_shapes(flat, include_top, name, origin), include_top


def cached_h5(name: str, cache: pathlib.Path, download: bool) -> pathlib.Path:
  """The cached Keras h5 of `name`, downloaded from the Keras host if allowed."""
  file_name, md5 = KERAS_FILES[name]
  path = cache / file_name
  how = (f'Download {KERAS_URL}{file_name} (md5 {md5}) elsewhere and either put it in '
         f'{cache}/ under that name or pass its path: '
         f'`python -m inception.weights fetch /path/to/{file_name}`.')
  if not path.exists():
    if not download:
      raise FileNotFoundError(f'{path} not found and download=False. {how}')
    import urllib.request
    log.info('Downloading %s%s', KERAS_URL, file_name)
    try:
      with urllib.request.urlopen(KERAS_URL + file_name, timeout=60) as r, \
          paths.atomic_write(path) as f:
        for chunk in iter(lambda: r.read(1 << 20), b''):
          f.write(chunk)
    except OSError as e:  # URLError, timeouts, DNS failures.
      raise DownloadError(f'Cannot download {KERAS_URL}{file_name}: {e}. {how}') from None
  found = paths.file_digest(path, 'md5')
  if found != md5:
    raise WeightsError(f'{path}: md5 {found} != expected {md5}; the file is truncated or not '
                       f'{file_name}. Delete it. {how}')
  return path
