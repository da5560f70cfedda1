"""The Keras 2 (tf_keras) references: the seed's model and the weight copy both ways.

`build_model` is the seed notebook's compiled model (frozen InceptionV3 cut at mixed7 + dense
head; `seed_model` builds it in either Keras); `backbone_of` its features alone; `augmentation`
the notebook's ImageDataGenerator. Weights go Flax -> Keras (`load_flax_variables`) and Keras
-> Flax (`to_flax_variables`) over one pairing of Keras layers with
`inception.models.inception_v3.UNIT_PATHS` (`keras_units`; tf_keras and Keras 3 alike).
`randomize_batchnorm` gives a model random BatchNorm statistics for feature comparisons;
`random_reference` is the speed benchmarks' Keras model with our copy of its weights;
`with_top` a full InceptionV3 with the ImageNet top (logits); `classifier` a trained run's
classifier. The recipe runner is `keras_recipe.py`, Keras 3 is `keras3_models.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from inception.weights import keras_h5

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
  `inception.models.inception_v3.UNIT_PATHS`. A model cut early (e.g. at mixed7) has the first
  units only: pair i is UNIT_PATHS[i]. tf_keras and Keras 3 name unnamed layers alike; each
  pair is checked to be conv -> BatchNorm in the graph (the BatchNorm input's Keras history,
  whose first field is the producing layer in both).
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
    if bn.input._keras_history[0] is not conv:  # pylint: disable=protected-access
      raise ValueError(f'Keras layer {conv.name!r} does not feed {bn.name!r}: not the '
                       'InceptionV3 conv/BatchNorm pairing by creation order')
  return list(zip(convs, bns))


def load_flax_variables(model, variables: Mapping[str, Any]) -> int:
  """Copies Flax InceptionV3 variables into a Keras `applications.InceptionV3`, in place.

  Args:
    model: `applications.InceptionV3(include_top=False, weights=None, ...)` of tf_keras or
      Keras 3, or a model holding its first units (see `keras_units`).
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


def randomize_batchnorm(model, seed: int | np.random.Generator = 0,
                        around: np.ndarray | None = None) -> None:
  """Gives every BatchNormalization of `model` random beta/moving mean/variance, in place.

  Keras initialises them to 0/0/1, which would leave the BatchNorm arithmetic untested in a
  feature comparison. Draws, layer by layer in `model.layers` order, from
  `np.random.default_rng(seed)` (or the generator `seed`):
    around=None: beta ~ N(0, 0.3), mean ~ N(0, 0.5), var ~ U(0.3, 3.0);
    around=images: statistics around the activations' own on those images (so a deep model's
      activations stay O(1) to its last block): a training-mode call from zero moving averages
      leaves 0.01 x the batch statistics (momentum 0.99), so each layer's batch mean/variance
      are recovered exactly; then beta ~ N(0, 0.2), mean = batch mean + N(0, 0.5) batch std,
      var = batch var x U(0.5, 2).
  """
  import tf_keras
  rng = np.random.default_rng(seed)
  bns = [l for l in model.layers if isinstance(l, tf_keras.layers.BatchNormalization)]
  if around is None:
    for layer in bns:
      beta, mean, var = layer.get_weights()
      layer.set_weights([rng.normal(0, 0.3, beta.shape), rng.normal(0, 0.5, mean.shape),
                         rng.uniform(0.3, 3.0, var.shape)])
    return
  for layer in bns:
    beta, mean, var = layer.get_weights()
    layer.set_weights([beta, np.zeros_like(mean), np.zeros_like(var)])
  model(around, training=True)
  for layer in bns:
    beta, mean, var = layer.get_weights()
    batch_mean, batch_var = mean / 0.01, var / 0.01
    layer.set_weights([
        rng.normal(0, 0.2, beta.shape).astype(np.float32),
        (batch_mean + rng.normal(0, 0.5, mean.shape) * np.sqrt(batch_var)).astype(np.float32),
        (batch_var * rng.uniform(0.5, 2, var.shape)).astype(np.float32)])


def seed_model(keras, image_size: int = 150, variables: Mapping[str, Any] | None = None,
               cut: str = 'mixed7', learning_rate: float = 1e-3, seed: int | None = None):
  """`build_model` in the Keras module `keras`: tf_keras, or Keras 3's `keras` (the same
  functional API; see `keras3_models.build_model`)."""
  from inception.models.inception_v3 import BLOCKS
  if variables is not None and cut in BLOCKS:
    # Checked before building Keras' model: a cut past the loaded blocks would silently
    # keep random weights there.
    missing = [b for b in BLOCKS[:BLOCKS.index(cut) + 1] if b not in variables['params']]
    if missing:
      raise ValueError(f'variables lack blocks {missing} that the cut at {cut!r} needs; load '
                       f'the full variables (not select_blocks below {cut!r})')
  if seed is not None:
    keras.utils.set_random_seed(seed)
  base = keras.applications.InceptionV3(include_top=False, weights=None,
                                        input_shape=(image_size, image_size, 3))
  if variables is not None:
    load_flax_variables(base, variables)
  for layer in base.layers:
    layer.trainable = False
  x = keras.layers.Flatten()(base.get_layer(cut).output)
  x = keras.layers.Dense(1024, activation='relu')(x)
  x = keras.layers.Dropout(0.2)(x)
  x = keras.layers.Dense(1, activation='sigmoid')(x)
  model = keras.Model(base.input, x)
  model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
                loss='binary_crossentropy', metrics=['accuracy'])
  return model


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
  import tf_keras
  return seed_model(tf_keras, image_size, variables, cut, learning_rate, seed)


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


def with_top(seed: int = 0):
  """A random InceptionV3 with the ImageNet top, as logits, any input size: (top, notop).

  Three conv/BatchNorm pairs are built first, so the InceptionV3 layers are numbered from
  conv2d_3 / batch_normalization_3 (like the published keras-applications files' conv2d_1..:
  a reader must order by suffix, conv2d_10 after conv2d_9, not by name or file position).
  `notop` is `applications.InceptionV3(weights=None, include_top=False, input_shape=(None,
  None, 3))` with `randomize_batchnorm` around 4 random 150 px images; `top` adds on it the
  top of `applications.InceptionV3` (global average pool 'avg_pool', Dense(1000)
  'predictions' with random weights) without the softmax. They share the backbone's layers;
  their h5 files have the layouts of the published without-top and with-top files. Random
  numbers from `np.random.default_rng(seed)` and `tf_keras.utils.set_random_seed(seed)`.
  """
  import tf_keras
  rng = np.random.default_rng(seed)
  tf_keras.utils.set_random_seed(seed)
  for _ in range(3):
    tf_keras.layers.Conv2D(1, 1), tf_keras.layers.BatchNormalization()
  notop = tf_keras.applications.InceptionV3(weights=None, include_top=False,
                                            input_shape=(None, None, 3))
  randomize_batchnorm(notop, rng, around=rng.uniform(-1, 1, (4, 150, 150, 3)).astype(np.float32))
  pooled = tf_keras.layers.GlobalAveragePooling2D(name='avg_pool')(notop.output)
  logits = tf_keras.layers.Dense(1000, name='predictions')(pooled)
  top = tf_keras.Model(notop.input, logits)
  top.get_layer('predictions').set_weights([
      rng.normal(0, 0.05, (2048, 1000)).astype(np.float32),
      rng.normal(0, 0.1, (1000,)).astype(np.float32)])
  return top, notop


def classifier(config, variables: dict, num_classes: int, temperature: float | None = None):
  """A trained run's classifier in Keras 2 (tf_keras), with the run's weights.

  [N, S, S, 3] images on the 0..255 scale -> [N, 1] sigmoid (2 classes) or [N, K] softmax:
  Rescaling (the run's `data.preprocess`), `applications.InceptionV3(include_top=False,
  weights=None)` up to layer `model.cut` (the backbone units copied by `load_flax_variables`),
  the run's head (flatten | gap -> Dense(units, relu) -> Dropout -> Dense(outputs), Dense
  kernels as they are), logits divided by `temperature` when the run applies one.
  """
  import tf_keras
  m, d = config.model, config.data
  if m.backbone != 'inception_v3':
    raise ValueError(f'model.backbone={m.backbone!r}: the Keras side is InceptionV3 only')
  size = int(d.image_size)
  params, stats = variables['params'], variables['batch_stats']
  base = tf_keras.applications.InceptionV3(include_top=False, weights=None,
                                           input_shape=(size, size, 3))
  load_flax_variables(base, {'params': params['backbone'], 'batch_stats': stats['backbone']})
  cut = tf_keras.Model(base.input, base.get_layer(m.cut).output, name='backbone')
  scale, offset = {'inception': (1 / 127.5, -1.0), 'rescale': (1 / 255, 0.0)}[d.preprocess]
  inputs = tf_keras.Input((size, size, 3))
  x = tf_keras.layers.Rescaling(scale, offset)(inputs)
  x = cut(x, training=False)
  x = (tf_keras.layers.Flatten() if m.head == 'flatten'
       else tf_keras.layers.GlobalAveragePooling2D())(x)
  head = params['head']
  if m.dense_units:
    dense = tf_keras.layers.Dense(m.dense_units, activation='relu')
    x = dense(x)
    dense.set_weights([np.asarray(head['dense']['kernel']), np.asarray(head['dense']['bias'])])
  x = tf_keras.layers.Dropout(m.dropout)(x)
  logits_layer = tf_keras.layers.Dense(np.asarray(head['logits']['bias']).shape[0])
  x = logits_layer(x)
  logits_layer.set_weights([np.asarray(head['logits']['kernel']),
                            np.asarray(head['logits']['bias'])])
  if temperature:
    x = tf_keras.layers.Rescaling(1.0 / temperature)(x)
  x = tf_keras.layers.Activation('sigmoid' if num_classes == 2 else 'softmax')(x)
  return tf_keras.Model(inputs, x)


def augmentation(rescale: float | None = 1 / 255):
  """The seed notebook's training ImageDataGenerator (for 0..255 inputs, as the notebook's)."""
  import tf_keras
  return tf_keras.preprocessing.image.ImageDataGenerator(rescale=rescale, **TRAIN_AUGMENTATION,
                                                         fill_mode='nearest')
