"""InceptionV3 (Flax): endpoint shapes, parameter counts, jit forward, bad inputs."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception.models import inception_v3 as model_lib


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_variables(net, size: int):
  shapes = jax.eval_shape(net.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  return {c: shapes[c] for c in ('params', 'batch_stats') if c in shapes}


def _block_output_shapes(net, size: int, batch: int = 2):
  """({block: shape}, output shape) of `net` on [batch, size, size, 3], without computing."""
  variables = _abstract_variables(net, size)

  def run(v, x):
    blocks = {}

    def capture(next_fun, args, kwargs, context):
      y = next_fun(*args, **kwargs)
      if len(context.module.scope.path) == 1 and context.method_name == '__call__':
        blocks[context.module.scope.path[0]] = y
      return y
    with nn.intercept_methods(capture):
      return blocks, net.apply(v, x)
  blocks, out = jax.eval_shape(run, variables,
                               jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
  return {k: v.shape for k, v in blocks.items()}, out.shape


@pytest.mark.parametrize('size', [75, 150, 299])
def test_every_endpoint_shape(size):
  blocks, logits = _block_output_shapes(
      model_lib.InceptionV3(stop_at='predictions', include_top=True), size)
  assert sorted(blocks) == sorted(model_lib.BLOCKS + ('predictions',))
  for block in model_lib.BLOCKS:
    assert blocks[block] == (2,) + model_lib.endpoint_shape(size, block), block
  assert logits == (2, 1000) == (2,) + model_lib.endpoint_shape(size, 'predictions')
  if size != 299:
    return
  _, pooled = _block_output_shapes(model_lib.InceptionV3(stop_at='avg_pool'), size)
  assert pooled == (2, 2048) == (2,) + model_lib.endpoint_shape(size, 'avg_pool')


def test_documented_spatial_sizes():
  table = {'mixed2': (7, 16, 35), 'mixed7': (3, 7, 17), 'mixed10': (1, 3, 8)}
  for endpoint, sizes in table.items():
    assert tuple(model_lib.endpoint_spatial_size(s, endpoint) for s in (75, 150, 299)) == sizes


def test_parameter_counts():
  full = _abstract_variables(model_lib.InceptionV3(stop_at='avg_pool'), 75)
  assert _count(full) == 21_802_784  # Kernels + BN betas + moving means and variances.
  assert _count(full['params']) == 21_768_352
  mixed7 = _abstract_variables(model_lib.InceptionV3(stop_at='mixed7'), 75)
  assert _count(mixed7) == 8_975_264
  assert sorted(mixed7['params']) == sorted(model_lib.BLOCKS[:9])
  top = _abstract_variables(
      model_lib.InceptionV3(stop_at='predictions', include_top=True), 75)
  assert _count(top) == 21_802_784 + 2048 * 1000 + 1000
  # The 2015 graph's max pool in mixed10 has no parameters: same tree.
  tf2015 = _abstract_variables(model_lib.InceptionV3(stop_at='avg_pool', mixed10_pool='max'), 75)
  assert jax.tree.map(lambda x: x.shape, tf2015) == jax.tree.map(lambda x: x.shape, full)
  # The parameter count does not depend on the input size.
  assert _count(_abstract_variables(model_lib.InceptionV3(stop_at='avg_pool'), 299)) == \
      21_802_784


def test_unit_paths_cover_the_parameter_tree_in_order():
  variables = _abstract_variables(model_lib.InceptionV3(stop_at='avg_pool'), 75)
  units = {(b, u) for b, block in variables['params'].items() for u in block}
  assert units == set(model_lib.UNIT_PATHS) and len(model_lib.UNIT_PATHS) == 94
  assert [b for b, _ in model_lib.UNIT_PATHS][:5] == ['stem'] * 5
  assert model_lib.UNIT_PATHS[5] == ('mixed0', 'branch1x1')
  assert model_lib.UNIT_PATHS[-1] == ('mixed10', 'branch_pool')


def test_every_block_concatenates_its_branches_in_concat_order():
  """Each slice of a block's output is the branch CONCAT_ORDER names (fails on any swap, even
  of two same-width branches: random kernels make every branch's values distinct)."""
  net = model_lib.InceptionV3(stop_at='mixed10')
  x = jax.random.uniform(jax.random.key(1), (1, 75, 75, 3), minval=-1, maxval=1)
  variables = net.init(jax.random.key(0), x)

  @jax.jit
  def run(variables, x):
    inputs, outputs, units = {}, {}, {}

    def capture(next_fun, args, kwargs, context):
      y = next_fun(*args, **kwargs)
      path = context.module.scope.path
      if context.method_name == '__call__' and len(path) == 1:
        inputs[path[0]], outputs[path[0]] = args[0], y
      elif context.method_name == '__call__' and isinstance(context.module, model_lib.ConvBN):
        units[path] = y
      return y
    with nn.intercept_methods(capture):
      net.apply(variables, x)
    return inputs, outputs, units
  inputs, outputs, units = run(variables, x)
  assert list(model_lib.CONCAT_ORDER) == list(model_lib.BLOCKS[1:])
  for block, order in model_lib.CONCAT_ORDER.items():
    pieces = [model_lib.max_pool_3x3(inputs[block]) if name == 'max_pool'
              else units[(block, name)] for name in order]
    assert all(float(jnp.std(p)) > 0 for p in pieces), block
    np.testing.assert_array_equal(jnp.concatenate(pieces, -1), outputs[block], err_msg=block)


def _filled(tree, seed: int = 0):
  """Random values for an abstract variables tree: He-scaled kernels (activations stay O(1)
  through the blocks), BatchNorm variances in [0.5, 2], other leaves N(0, 0.1)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'kernel' in name:
      fan_in = np.prod(leaf.shape[:-1])
      return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
    if "'var'" in name:
      return rng.uniform(0.5, 2, leaf.shape).astype(np.float32)
    return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, tree)


def test_fused_1x1_units_compute_what_the_units_do_one_by_one():
  """fuse_1x1 (the default) is a faster schedule of the same network: same params, same
  outputs and BatchNorm updates (to float rounding), unfolded, training and folded."""
  from inception.models import folding  # pylint: disable=g-import-not-at-top
  fused = model_lib.InceptionV3(stop_at='mixed10')
  plain = fused.clone(fuse_1x1=False)
  assert fused.fuse_1x1
  variables = _filled(_abstract_variables(fused, 75))
  assert jax.tree.structure(_abstract_variables(plain, 75)) == jax.tree.structure(variables)
  x = jax.random.uniform(jax.random.key(1), (2, 75, 75, 3), minval=-1, maxval=1)

  def close(got, want, rtol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      assert float(jnp.std(w)) > 0
      np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(jnp.abs(w).max()))

  def run(net, variables):
    # Training-mode blocks with 2 x 7 x 7 and 2 x 3 x 3 samples per channel (mixed9's 2 x 1 x 1
    # would turn rounding into large differences through the batch variance). mixed10 with the
    # 2015 graph's max pool, which does not commute with the conv: its unit runs on its own.
    features, updates = net.apply(variables, x, train_blocks=('mixed2', 'mixed6'),
                                  mutable=['batch_stats'])
    return (net.apply(variables, x), net.clone(mixed10_pool='max').apply(variables, x),
            features, updates)
  close(jax.jit(functools.partial(run, fused))(variables),
        jax.jit(functools.partial(run, plain))(variables), rtol=1e-4)
  folded = folding.fold_batchnorm(variables)
  close(jax.jit(folding.folded_model(fused).apply)(folded, x),
        jax.jit(folding.folded_model(plain).apply)(folded, x), rtol=1e-5)


def test_fused_1x1_units_have_the_gradients_of_the_units():
  """Fine-tuning a block (ablation `unfreeze_mixed7`) differentiates through the fused conv.

  In float64, so that the comparison is exact to 1e-9: in float32 the training-mode BatchNorm's
  backward pass amplifies the two schedules' rounding differences to ~2e-4 of the largest
  gradient, too loose to mean much."""
  with jax.enable_x64(True):
    fused = model_lib.InceptionV3(stop_at='mixed0', dtype=jnp.float64)
    plain = fused.clone(fuse_1x1=False)
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64),
                             _filled(_abstract_variables(fused, 75)))
    x = jax.random.uniform(jax.random.key(1), (2, 75, 75, 3), jnp.float64, minval=-1, maxval=1)

    def loss(params, net):
      out, _ = net.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                         train_blocks=('mixed0',), mutable=['batch_stats'])
      return jnp.sum(out ** 2)
    got = jax.jit(jax.grad(functools.partial(loss, net=fused)))(variables['params'])
    want = jax.jit(jax.grad(functools.partial(loss, net=plain)))(variables['params'])
    for g, w in zip(jax.tree.leaves(got['mixed0']), jax.tree.leaves(want['mixed0']), strict=True):
      assert w.dtype == jnp.float64 and float(jnp.abs(w).max()) > 0
      np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9 * float(jnp.abs(w).max()))


def test_fused_1x1_units_without_their_params_name_the_unit():
  net = model_lib.InceptionV3(stop_at='mixed0')
  variables = _filled(_abstract_variables(net, 75))
  del variables['params']['mixed0']['branch5x5_1']
  with pytest.raises(ValueError, match='mixed0/branch5x5_1 has no params'):
    net.apply(variables, jnp.zeros((1, 75, 75, 3)))


def test_forward_under_jit_is_finite_and_per_example():
  net = model_lib.InceptionV3(stop_at='mixed7')
  x = jax.random.uniform(jax.random.key(1), (2, 75, 75, 3), minval=-1, maxval=1)
  # Random variables made with numpy: compiling `net.init` takes over a minute on 2 CPU cores.
  variables = _filled(_abstract_variables(net, 75))
  apply = jax.jit(net.apply)
  out = apply(variables, x)
  assert out.shape == (2, 3, 3, 768) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out))) and float(out.min()) >= 0  # ReLU output.
  assert float(jnp.abs(out[0] - out[1]).max()) > 0
  # Inference-mode BatchNorm does not mix examples: reversing the batch reverses the output.
  np.testing.assert_allclose(apply(variables, x[::-1]), out[::-1], rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_refused():
  x = jnp.zeros((1, 74, 74, 3))
  with pytest.raises(ValueError, match='at least 75x75 pixels, got 74x74'):
    jax.eval_shape(model_lib.InceptionV3().init, jax.random.key(0), x)
  with pytest.raises(ValueError, match='expects images \\[N, H, W, 3\\]'):
    jax.eval_shape(model_lib.InceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75)))
  with pytest.raises(ValueError, match='needs include_top=True'):
    jax.eval_shape(model_lib.InceptionV3(stop_at='predictions').init, jax.random.key(0),
                   jnp.zeros((1, 75, 75, 3)))
  with pytest.raises(ValueError, match="stop_at='mixed11' is not an endpoint"):
    jax.eval_shape(model_lib.InceptionV3(stop_at='mixed11').init, jax.random.key(0),
                   jnp.zeros((1, 75, 75, 3)))


def test_apply_endpoints_returns_every_block_up_to_the_cut():
  net = model_lib.InceptionV3(stop_at='mixed3')
  x = jax.ShapeDtypeStruct((2, 75, 75, 3), jnp.float32)
  variables = _abstract_variables(net, 75)
  found = jax.eval_shape(lambda v, images: model_lib.apply_endpoints(net, v, images), variables, x)
  # eval_shape returns dicts with sorted keys, so compare as sets.
  assert set(found) == set(model_lib.BLOCKS[:model_lib.BLOCKS.index('mixed3') + 1])
  for name, value in found.items():
    assert value.shape == (2,) + model_lib.endpoint_shape(75, name), name
