"""Reads Keras' legacy h5 weight files (`model.save_weights('x.h5')`, keras-applications) with h5py.

Layout: the root (or its `model_weights` group, in files saved with `model.save`) has a
`layer_names` attribute; each layer's group has a `weight_names` attribute whose entries
('conv2d_1/kernel:0', ...) are dataset paths relative to that group. No TensorFlow needed.
"""

from __future__ import annotations

import os
import re

import numpy as np

_SUFFIX = re.compile(r'^(?P<base>.*?)(?:_(?P<n>\d+))?$')


class KerasH5Error(ValueError):
  """The file is not a legacy Keras h5 weights file (names the file and why)."""


def _decode(x) -> str:
  return x.decode('utf8') if isinstance(x, bytes) else str(x)


def read_layers(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Every layer's weights: {layer name: {short weight name: array}} in the file's layer order.

  Short names drop the layer prefix and the ':0' suffix ('conv2d_1/kernel:0' -> 'kernel').
  Layers without weights are kept with an empty dict.

  Raises:
    KerasH5Error: not an HDF5 file, or no `layer_names` attribute at the root or under
      `model_weights` (e.g. a Keras 3 `.weights.h5`), or a weight named twice in a layer.
  """
  import h5py  # Only needed for this source.
  name = os.fspath(path)
  try:
    f = h5py.File(name, 'r')
  except OSError as e:
    raise KerasH5Error(f'{name}: not a readable HDF5 file ({e}); the file is truncated or '
                       'not a Keras weights file') from None
  with f:
    root = f
    if 'layer_names' not in root.attrs and 'model_weights' in root:
      root = root['model_weights']
    if 'layer_names' not in root.attrs:
      raise KerasH5Error(f'{name}: no `layer_names` attribute at the root or under '
                         '`model_weights`; expected a legacy Keras h5 weights file as written by '
                         "tf.keras `model.save_weights('x.h5')` (Keras 3 `.weights.h5` files "
                         'are not supported)')
    layers = {}
    for layer in (_decode(n) for n in root.attrs['layer_names']):
      group = root[layer]
      weights = {}
      for weight_name in (_decode(n) for n in group.attrs.get('weight_names', [])):
        short = weight_name.rsplit('/', 1)[-1].split(':', 1)[0]
        if short in weights:
          raise KerasH5Error(f'{name}: layer {layer} has two weights named {short!r}')
        weights[short] = np.asarray(group[weight_name][()])
      layers[layer] = weights
    return layers


def layers_of_kind(layers: dict, base: str) -> list[str]:
  """Names of the layers called `base` or `base_<n>`, sorted by n (no suffix counts as 0).

  Keras numbers layers per session ('conv2d', 'conv2d_1', ... or 'conv2d_95', ... when other
  models were built first), so the creation order is the numeric suffix, not the file order.
  """
  found = []
  for layer in layers:
    m = _SUFFIX.match(layer)
    if m['base'] == base:
      found.append((int(m['n'] or 0), layer))
  return [layer for _, layer in sorted(found)]
