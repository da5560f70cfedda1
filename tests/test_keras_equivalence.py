"""The Flax InceptionV3 with weights read from Keras h5 files equals tf_keras' InceptionV3.

One Keras InceptionV3 (with and without top, any input size; tests/reference/keras_models.py's
`with_top`) is built once per module, with random kernels and random, non-trivial BatchNorm
statistics, saved as legacy h5 files (the layout of the published keras-applications files),
loaded through `inception.weights`, and the endpoints compared at 75, 150 and 299 px.
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util
import pytest

tf_keras = pytest.importorskip('tf_keras')

import jax  # noqa: E402
import flax.linen as nn  # noqa: E402

from inception.models import inception_v3 as model_lib  # noqa: E402
from inception import weights  # noqa: E402
from tests.reference import keras_models as reference  # noqa: E402

pytestmark = pytest.mark.slow
BATCH = 3


@pytest.fixture(scope='module')
def keras_nets(tmp_path_factory):
  """(model with top, backbone without), sharing weights, and their h5 files; any input size.

  `tests.reference.keras_models.with_top`: one InceptionV3 (the slow part), numbered from
  conv2d_3 (the reader must order by suffix), random BatchNorm statistics around the
  activations' own, and the top as logits. Its h5 has the layout of the published with-top file.
  """
  tmp = tmp_path_factory.mktemp('keras')
  top, notop = reference.with_top(seed=0)
  assert notop.layers[1].name == 'conv2d_3'
  top_h5, notop_h5 = tmp / 'top.h5', tmp / 'notop.h5'
  top.save_weights(top_h5)
  notop.save_weights(notop_h5)
  return top, notop, top_h5, notop_h5


@pytest.fixture(scope='module')
def loaded(keras_nets, tmp_path_factory):
  _, _, top_h5, notop_h5 = keras_nets
  cache = tmp_path_factory.mktemp('cache')
  return (weights.load(str(top_h5), cache_dir=cache),
          weights.load(str(notop_h5), cache_dir=cache))


def _images(size: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (BATCH, size, size, 3)).astype(np.float32)


def _keras_endpoints(keras_model, x, names):
  sub = tf_keras.Model(keras_model.input, [keras_model.get_layer(n).output for n in names])
  out = sub(x, training=False)
  return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def _flax_endpoints(variables, x, stop_at, include_top=False):
  """({block name: output}, model output); block outputs captured by method interception."""
  net = model_lib.InceptionV3(stop_at=stop_at, include_top=include_top, mixed10_pool='avg')

  def run(v, x):
    blocks = {}

    def capture(next_fun, args, kwargs, context):
      y = next_fun(*args, **kwargs)
      if len(context.module.scope.path) == 1 and context.method_name == '__call__':
        blocks[context.module.scope.path[0]] = y
      return y
    with nn.intercept_methods(capture):
      out = net.apply(v, x)
    return blocks, out

  with jax.default_matmul_precision('highest'):
    blocks, out = jax.jit(run)(variables, x)
  return {k: np.asarray(v) for k, v in blocks.items()}, np.asarray(out)


def _assert_close(ours, ref, what):
  scale = np.abs(ref).max()
  err = np.abs(ours - ref).max()
  assert ours.shape == ref.shape, f'{what}: shape {ours.shape} != Keras {ref.shape}'
  assert scale > 1e-2, f'{what}: degenerate reference (max |x| = {scale})'
  assert err <= 1e-4 * scale, f'{what}: max |diff| {err:.3g} > 1e-4 x scale {scale:.3g}'


def test_loaded_h5_files_have_the_right_layout(loaded):
  top, notop = loaded
  assert top.include_top and not notop.include_top
  assert top.mixed10_pool == notop.mixed10_pool == 'avg'
  assert notop.parameter_count == 21_802_784
  assert top.parameter_count == 21_802_784 + 2048 * 1000 + 1000
  # The two files hold the same backbone: identical conversions apart from the top.
  flat_top = traverse_util.flatten_dict(top.variables, sep='/')
  flat_notop = traverse_util.flatten_dict(notop.variables, sep='/')
  assert set(flat_top) - set(flat_notop) == {'params/predictions/kernel',
                                             'params/predictions/bias'}
  for k, v in flat_notop.items():
    np.testing.assert_array_equal(v, flat_top[k], err_msg=k)


@pytest.mark.parametrize('size', [75, 150])
def test_endpoints_match_keras(keras_nets, loaded, size):
  _, notop, _, _ = keras_nets
  x = _images(size, seed=size)
  ref7, ref10 = _keras_endpoints(notop, x, ['mixed7', 'mixed10'])
  ours, out = _flax_endpoints(loaded[1].variables, x, 'mixed10')
  _assert_close(ours['mixed7'], ref7, f'mixed7 at {size} px')
  _assert_close(out, ref10, f'mixed10 at {size} px')


def test_endpoints_and_logits_match_keras_at_299(keras_nets, loaded):
  top, _, _, _ = keras_nets
  x = _images(299, seed=299)
  ref7, ref10, logits = _keras_endpoints(top, x, ['mixed7', 'mixed10', 'predictions'])
  ours, out = _flax_endpoints(loaded[0].variables, x, 'predictions', include_top=True)
  _assert_close(ours['mixed7'], ref7, 'mixed7 at 299 px')
  _assert_close(ours['mixed10'], ref10, 'mixed10 at 299 px')
  _assert_close(out, logits, 'logits at 299 px')
  assert np.std(logits) > 0.1  # The top is not trivially constant.


def test_average_pool_counting_its_padding_would_be_caught(keras_nets, loaded, monkeypatch):
  _, notop, _, _ = keras_nets
  x = _images(75, seed=1)
  (ref7,) = _keras_endpoints(notop, x, ['mixed7'])

  def pool_counting_padding(y):
    return nn.avg_pool(y, (3, 3), strides=(1, 1), padding='SAME', count_include_pad=True)
  monkeypatch.setattr(model_lib, 'avg_pool_3x3_same', pool_counting_padding)
  _, out = _flax_endpoints(loaded[1].variables, x, 'mixed7')
  err = np.abs(out - ref7).max() / np.abs(ref7).max()
  assert err > 1e-2, f'count_include_pad=True went unnoticed (relative error {err:.2g})'


def test_tiny_keras_model_h5_refused(tmp_path):
  tiny = tf_keras.Sequential([
      tf_keras.Input((8, 8, 3)), tf_keras.layers.Conv2D(4, 3, use_bias=False),
      tf_keras.layers.BatchNormalization(scale=False), tf_keras.layers.Flatten(),
      tf_keras.layers.Dense(2)])
  path = tmp_path / 'tiny.h5'
  tiny.save_weights(path)
  with pytest.raises(weights.WeightsError) as e:
    weights.load(str(path), cache_dir=tmp_path / 'cache')
  assert 'tiny.h5' in str(e.value)
  assert 'found 1 conv2d and 1 batch_normalization layers, expected 94' in str(e.value)
  assert not (tmp_path / 'cache' / 'converted').exists() or not any(
      (tmp_path / 'cache' / 'converted').iterdir())
