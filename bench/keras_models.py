"""The Keras 2 (tf_keras) side of the benchmarks: the seed's model and the weight copy both ways.

`build_model` is the seed notebook's compiled model (frozen InceptionV3 cut at mixed7 + dense
head); `backbone_of` its features alone; `augmentation` the notebook's ImageDataGenerator.
Weights go Flax -> Keras (`load_flax_variables`) and Keras -> Flax (`to_flax_variables`) over
one pairing of Keras layers with `inception.models.inception_v3.UNIT_PATHS` (`keras_units`).
`randomize_batchnorm` gives a model random BatchNorm statistics for feature comparisons;
`random_reference` is the speed benchmarks' Keras model with our copy of its weights.
The recipe runner is `keras_recipe.py`; the non-Keras helpers are in `common.py`.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

BENCH_DIR = str(pathlib.Path(__file__).resolve().parent)
if BENCH_DIR not in sys.path:  # Also when imported as bench.keras_models (tests): find `common`.
  sys.path.insert(0, BENCH_DIR)
# `common` also puts the repo root on sys.path (for `inception`).
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from inception.weights import keras_h5  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_UNITS = 94  # Conv+BN units of InceptionV3 (`inception.models.inception_v3.UNIT_PATHS`).
# The seed notebook's training augmentation (ImageDataGenerator arguments besides rescale).
TRAIN_AUGMENTATION = dict(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                          shear_range=0.2, zoom_range=0.2, horizontal_flip=True)


def configure_tensorflow(threads: int) -> None:
  """Limits TF's CPU thread pools to `threads` (must run before TF executes anything)."""
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)


def keras_units(model) -> list[tuple[Any, Any]]:
  """The (Conv2D, BatchNormalization) layer pairs of a Keras InceptionV3, in creation order.

  Keras names them conv2d[_k] / batch_normalization[_k] with k increasing in creation order
  (k may start above 0 when other models were built first), which is the order of
  `inception.models.inception_v3.UNIT_PATHS`. A model cut early (e.g. at mixed7) has the first units only:
  pair i is UNIT_PATHS[i].
  """
  by_name = {l.name: l for l in model.layers}
  # The creation order by name suffix, as the h5 reader orders a file's layers.
  convs = [by_name[n] for n in keras_h5.layers_of_kind(by_name, 'conv2d')]
  bns = [by_name[n] for n in keras_h5.layers_of_kind(by_name, 'batch_normalization')]
  if len(convs) != len(bns) or not 0 < len(convs) <= NUM_UNITS:
    raise ValueError(f'Keras model {model.name!r} has {len(convs)} conv2d and {len(bns)} '
                     f'batch_normalization layers; an InceptionV3 (or one cut early) has the '
                     f'same number of each, 1 to {NUM_UNITS}')
  for conv, bn in zip(convs, bns):
    if not any(node.outbound_layer is bn for node in conv.outbound_nodes):
      raise ValueError(f'Keras layer {conv.name!r} does not feed {bn.name!r}: not the '
                       'InceptionV3 conv/BatchNorm pairing by creation order')
  return list(zip(convs, bns))


def load_flax_variables(model, variables: Mapping[str, Any]) -> int:
  """Copies Flax InceptionV3 variables into a Keras `applications.InceptionV3`, in place.

  Args:
    model: `tf_keras.applications.InceptionV3(include_top=False, weights=None, ...)`, or a
      model holding its first units (see `keras_units`).
    variables: {'params', 'batch_stats'} nested dicts keyed like `inception.models.inception_v3`: unit
      (block, unit) has params[block][unit]['conv']['kernel'] [kh, kw, in, out] (HWIO, as
      Keras), params[block][unit]['bn']['bias'] [out], batch_stats[block][unit]['bn']['mean'
      | 'var'] [out]. Blocks absent from `variables` (e.g. after `select_blocks`) are skipped.

  Returns:
    The number of units loaded; the first ones in creation order (e.g. 64 up to mixed7).

  Keras' BatchNormalization here has scale=False: weights [beta, moving_mean,
  moving_variance]; epsilon 1e-3 on both sides.
  """
  from inception.models.inception_v3 import UNIT_PATHS
  params, stats = variables['params'], variables['batch_stats']
  loaded = 0
  for (block, unit), (conv, bn) in zip(UNIT_PATHS, keras_units(model)):
    if block not in params:
      continue
    where = f'{block}/{unit}'
    try:
      kernel = np.asarray(params[block][unit]['conv']['kernel'], np.float32)
      beta = np.asarray(params[block][unit]['bn']['bias'], np.float32)
      mean = np.asarray(stats[block][unit]['bn']['mean'], np.float32)
      var = np.asarray(stats[block][unit]['bn']['var'], np.float32)
    except KeyError as e:
      raise ValueError(f'variables lack {where} entry {e}; expected params {where}/conv/kernel, '
                       f'{where}/bn/bias and batch_stats {where}/bn/mean, var') from None
    expected_kernel = tuple(conv.kernel.shape)
    if kernel.shape != expected_kernel:
      raise ValueError(f'{where}/conv/kernel has shape {kernel.shape}; Keras layer '
                       f'{conv.name!r} needs {expected_kernel} (HWIO)')
    bn_shapes = [tuple(w.shape) for w in bn.weights]
    if len(bn_shapes) != 3 or any(x.shape != s for x, s in zip((beta, mean, var), bn_shapes)):
      raise ValueError(f'{where}/bn: bias {beta.shape}, mean {mean.shape}, var {var.shape} do '
                       f'not match Keras layer {bn.name!r} weights {bn_shapes} '
                       '(beta, moving_mean, moving_variance; built with scale=False)')
    conv.set_weights([kernel])
    bn.set_weights([beta, mean, var])
    loaded += 1
  if loaded == 0:
    raise ValueError(f'variables have none of the InceptionV3 blocks; top-level params keys: '
                     f'{sorted(params)}')
  return loaded


def to_flax_variables(model) -> dict[str, Any]:
  """A Keras InceptionV3's conv/BatchNorm weights as our variables (numpy), by `keras_units`.

  Returns:
    {'params': {block: {unit: {'conv': {'kernel'}, 'bn': {'bias'}}}},
     'batch_stats': {block: {unit: {'bn': {'mean', 'var'}}}}} for the units `model` has (a
    model cut at mixed7 gives the blocks up to mixed7): `load_flax_variables`' input layout.
  """
  from inception.models.inception_v3 import UNIT_PATHS
  params, stats = {}, {}
  for (block, unit), (conv, bn) in zip(UNIT_PATHS, keras_units(model)):
    (kernel,) = conv.get_weights()
    beta, mean, var = bn.get_weights()
    params.setdefault(block, {})[unit] = {'conv': {'kernel': kernel}, 'bn': {'bias': beta}}
    stats.setdefault(block, {})[unit] = {'bn': {'mean': mean, 'var': var}}
  return {'params': params, 'batch_stats': stats}


def randomize_batchnorm(model, seed: int = 0) -> None:
  """Gives every BatchNormalization of `model` random beta/moving mean/variance, in place.

  Keras initialises them to 0/0/1, which would leave the BatchNorm arithmetic untested in a
  feature comparison. Draws, layer by layer in `model.layers` order, from
  `np.random.default_rng(seed)`: beta ~ N(0, 0.3), mean ~ N(0, 0.5), var ~ U(0.3, 3.0).
  """
  import tf_keras
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      beta, mean, var = layer.get_weights()
      layer.set_weights([rng.normal(0, 0.3, beta.shape), rng.normal(0, 0.5, mean.shape),
                         rng.uniform(0.3, 3.0, var.shape)])


def build_model(image_size: int = 150, variables: Mapping[str, Any] | None = None,
                cut: str = 'mixed7', learning_rate: float = 1e-3, seed: int | None = None):
  """The seed's compiled Keras model: frozen InceptionV3 up to `cut` + the dense head.

  Args:
    image_size: square input side, pixels (>= 75).
    variables: Flax variables to load (see `load_flax_variables`); None keeps Keras' random
      initialisation (tests and speed benchmarks). Every unit up to `cut` must be present.
    cut: name of the Keras layer whose output feeds the head ('mixed7' in the seed).
    learning_rate: RMSprop learning rate.
    seed: when given, `tf_keras.utils.set_random_seed(seed)` first (python/numpy/TF), so the
      random initialisation is reproducible.

  Returns:
    tf_keras.Model: [N, S, S, 3] images in [0, 1] -> [N, 1] probabilities of class 1, compiled
    with RMSprop, binary cross-entropy and accuracy. Flatten -> Dense(1024, relu) ->
    Dropout(0.2) -> Dense(1, sigmoid) on the cut layer's output.
  """
  common.quiet_tensorflow()
  import tf_keras
  from inception.models.inception_v3 import BLOCKS
  if variables is not None and cut in BLOCKS:
    # Checked before building Keras' model: a cut past the loaded blocks would silently
    # keep random weights there.
    missing = [b for b in BLOCKS[:BLOCKS.index(cut) + 1] if b not in variables['params']]
    if missing:
      raise ValueError(f'variables lack blocks {missing} that the cut at {cut!r} needs; load '
                       f'the full variables (not select_blocks below {cut!r})')
  if seed is not None:
    tf_keras.utils.set_random_seed(seed)
  base = tf_keras.applications.InceptionV3(include_top=False, weights=None,
                                           input_shape=(image_size, image_size, 3))
  if variables is not None:
    load_flax_variables(base, variables)
  for layer in base.layers:
    layer.trainable = False
  x = tf_keras.layers.Flatten()(base.get_layer(cut).output)
  x = tf_keras.layers.Dense(1024, activation='relu')(x)
  x = tf_keras.layers.Dropout(0.2)(x)
  x = tf_keras.layers.Dense(1, activation='sigmoid')(x)
  model = tf_keras.Model(base.input, x)
  model.compile(optimizer=tf_keras.optimizers.RMSprop(learning_rate=learning_rate),
                loss='binary_crossentropy', metrics=['accuracy'])
  return model


def backbone_of(model, cut: str = 'mixed7'):
  """`model`'s frozen backbone alone: input -> layer `cut`'s output (the same layers, shared)."""
  import tf_keras
  return tf_keras.Model(model.input, model.get_layer(cut).output)


def random_reference(image_size: int, cut: str = 'mixed7', seed: int = 0):
  """The speed benchmarks' reference: the seed's Keras model with random weights and BatchNorm
  statistics, its backbone, and the same weights as our variables.

  Returns:
    (keras_model, keras_features, variables): `build_model(image_size, cut=cut, seed=seed)`
    after `randomize_batchnorm(..., seed)`; `backbone_of(keras_model, cut)`; and
    `to_flax_variables(keras_features)` ({'params', 'batch_stats'} up to `cut`).
  """
  keras_model = build_model(image_size, cut=cut, seed=seed)
  randomize_batchnorm(keras_model, seed)
  keras_features = backbone_of(keras_model, cut)
  return keras_model, keras_features, to_flax_variables(keras_features)


def augmentation(rescale: float | None = 1 / 255):
  """The seed notebook's training ImageDataGenerator (for 0..255 inputs, as the notebook's)."""
  import tf_keras
  return tf_keras.preprocessing.image.ImageDataGenerator(rescale=rescale, **TRAIN_AUGMENTATION,
                                                         fill_mode='nearest')
