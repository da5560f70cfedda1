"""inception.models.folding: the BatchNorm-folded backbone computes what the unfolded one does."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception.models import folding
from inception.models import inception_v3 as model_lib


def _random_variables(shapes, seed):
  """Random variables for the tree `shapes`: He-normal kernels, random BatchNorm statistics.

  Made with numpy from `jax.eval_shape(model.init, ...)`, which saves the (slow, unjitted)
  init forward pass; non-trivial mean/var/beta make the fold do real work.
  """
  rng = np.random.default_rng(seed)
  leaves_with_paths = jax.tree_util.tree_flatten_with_path(shapes)[0]
  treedef = jax.tree_util.tree_structure(shapes)
  new = []
  for path, leaf in leaves_with_paths:
    name = jax.tree_util.keystr(path)
    if "'kernel'" in name:
      leaf = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif "'mean'" in name:
      leaf = rng.normal(0.0, 0.5, leaf.shape)
    elif "'var'" in name:
      leaf = rng.uniform(0.3, 3.0, leaf.shape)
    elif "'bn'" in name and "'bias'" in name:
      leaf = rng.normal(0.0, 0.3, leaf.shape)
    new.append(np.asarray(leaf, np.float32))
  return jax.tree_util.tree_unflatten(treedef, new)


@functools.lru_cache(maxsize=None)
def _mixed7_setup():
  model = model_lib.InceptionV3(stop_at='mixed7')
  images = jax.random.uniform(jax.random.key(0), (2, 150, 150, 3), minval=-1.0, maxval=1.0)
  shapes = jax.eval_shape(model.init, jax.random.key(1), images[:1])
  return model, images, _random_variables(shapes, seed=2)


def test_folded_mixed7_equals_unfolded_at_150px():
  model, images, variables = _mixed7_setup()
  folded = folding.fold_batchnorm(variables)
  with jax.default_matmul_precision('highest'):
    want = np.asarray(jax.jit(model.apply)(variables, images), np.float64)
    got = np.asarray(jax.jit(folding.folded_model(model).apply)(folded, images), np.float64)
  assert want.shape == got.shape == (2,) + model_lib.endpoint_shape(150, 'mixed7')
  # Non-degenerate activations, so the comparison means something.
  assert np.isfinite(want).all() and 0.05 < np.mean(want > 0) < 0.95 and want.std() > 1e-2
  relative = np.linalg.norm(got - want) / np.linalg.norm(want)
  print(f'folded vs unfolded mixed7: relative L2 error {relative:.2e}')
  assert relative <= 1e-5, relative
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_folded_tree_matches_the_folded_model_and_keeps_other_leaves():
  model = model_lib.InceptionV3(stop_at='mixed0')
  x = jnp.zeros((1, 75, 75, 3))
  variables = _random_variables(jax.eval_shape(model.init, jax.random.key(0), x), seed=0)
  # A transfer-model-like tree: backbone under a sub-tree, plus an unrelated head leaf.
  nested = {'params': {'backbone': variables['params'], 'head': {'kernel': np.ones((3, 1))}},
            'batch_stats': {'backbone': variables['batch_stats']}}
  folded = folding.fold_batchnorm(nested)
  assert set(folded) == {'params'}  # Every statistic was consumed.
  expected = jax.eval_shape(folding.folded_model(model).init, jax.random.key(0), x)
  shapes = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), folded['params']['backbone'])
  assert shapes == jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), expected['params'])
  assert 'batch_stats' not in expected
  np.testing.assert_array_equal(folded['params']['head']['kernel'], np.ones((3, 1)))
  units = [k for k in folded['params']['backbone']['mixed0']]
  assert len(units) == 7 and all(set(folded['params']['backbone']['mixed0'][u]) == {'conv'}
                                 for u in units)


def test_fold_unit_matches_conv_then_batchnorm():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  beta, mean = rng.normal(size=5), rng.normal(size=5)
  var = rng.uniform(0.1, 2.0, size=5)
  x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1), padding='SAME',
                           dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                           precision=jax.lax.Precision.HIGHEST)
  want = (np.asarray(conv(x, kernel), np.float64) - mean) / np.sqrt(var + 1e-3) + beta
  k, b = folding.fold_unit(kernel, beta, mean, var, epsilon=1e-3)
  assert k.dtype == np.float32 and b.dtype == np.float32 and b.shape == (5,)
  np.testing.assert_allclose(np.asarray(conv(x, k)) + b, want, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_named():
  model = model_lib.InceptionV3(stop_at='stem')
  x = jnp.zeros((1, 75, 75, 3))
  variables = _random_variables(jax.eval_shape(model.init, jax.random.key(0), x), seed=0)
  with pytest.raises(ValueError, match=r'stem/conv2d_1a_3x3 has no batch_stats'):
    folding.fold_batchnorm({'params': variables['params']})
  with pytest.raises(ValueError, match='needs variables with "params"'):
    folding.fold_batchnorm({'batch_stats': variables['batch_stats']})
  with pytest.raises(ValueError, match='found no conv\\+BatchNorm unit'):
    folding.fold_batchnorm({'params': {'dense': {'kernel': np.ones((2, 2))}}})
  with pytest.raises(ValueError, match=r"BatchNorm parameters .*'var': \(4,\).*\[5\]"):
    folding.fold_unit(np.ones((1, 1, 3, 5)), np.zeros(5), np.zeros(5), np.ones(4))
  folded = folding.fold_batchnorm(variables)
  with pytest.raises(ValueError, match='fold_batchnorm=True has no BatchNorm to train'):
    jax.eval_shape(lambda v: folding.folded_model(model).apply(v, x, train_blocks=('stem',)),
                   folded)


def test_default_model_is_unchanged():
  """The fold_batchnorm attribute is off by default: same param tree as before (no conv bias)."""
  variables = jax.eval_shape(model_lib.InceptionV3(stop_at='stem').init, jax.random.key(0),
                             jnp.zeros((1, 75, 75, 3)))
  unit = variables['params']['stem']['conv2d_1a_3x3']
  assert set(unit) == {'conv', 'bn'} and set(unit['conv']) == {'kernel'}
  assert set(variables['batch_stats']['stem']['conv2d_1a_3x3']['bn']) == {'mean', 'var'}


def test_cpu_compiler_options_turn_ynnpack_off_and_keep_results():
  """inception.train.xla_options (measured with the folded backbone): Eigen convs, same numbers."""
  from inception.train import xla_options
  assert xla_options.compiler_options('gpu') == {}
  options = xla_options.compiler_options('cpu')
  x = jax.random.normal(jax.random.key(0), (2, 17, 17, 32))
  k = jax.random.normal(jax.random.key(1), (1, 7, 32, 48))
  conv = lambda x, k: jax.nn.relu(jax.lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  default = jax.jit(conv).lower(x, k).compile()
  eigen = jax.jit(conv, compiler_options=options).lower(x, k).compile()
  assert '__ynn_fusion' in default.as_text()  # jaxlib 0.10.2's default, which the option undoes.
  assert '__ynn_fusion' not in eigen.as_text()
  np.testing.assert_allclose(eigen(x, k), default(x, k), rtol=1e-5, atol=1e-5)
