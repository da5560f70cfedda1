"""Tests of the Keras 2 references: tests/reference/keras_models.py (the weight copy both ways,
the seed's model) and tests/reference/keras_recipe.py (a tiny end-to-end run, summary and
table)."""

from __future__ import annotations

import json
import math
import re
import pathlib

import numpy as np
import pytest

tf_keras = pytest.importorskip('tf_keras')

from tests.reference import keras_models  # pylint: disable=g-import-not-at-top
from tests.reference import keras_recipe as recipe  # pylint: disable=g-import-not-at-top


def _random_flax_variables(image_size: int, stop_at: str, seed: int = 0):
  """Flax InceptionV3 up to `stop_at` and random numpy variables for it.

  Shapes come from `jax.eval_shape` (an eager `init` takes over a minute on 2 cores). Kernels
  are He-normal, BN bias/mean ~ N(0, 0.1) and var ~ U(0.5, 2), so every BN term matters.
  """
  import jax
  from inception.models.inception_v3 import InceptionV3
  model = InceptionV3(stop_at=stop_at)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          np.zeros((1, image_size, image_size, 3), np.float32))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = np.prod(leaf.shape[:-1])
      return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
    if name == 'var':
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)  # bn bias, mean

  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  return model, {'params': variables['params'], 'batch_stats': variables['batch_stats']}


@pytest.fixture(scope='module')
def keras_base():
  """A Keras InceptionV3 at 75 px, built after another so its layer suffixes do not start at 0."""
  tf_keras.backend.clear_session()
  tf_keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3))
  return tf_keras.applications.InceptionV3(include_top=False, weights=None,
                                           input_shape=(75, 75, 3))


@pytest.mark.slow
def test_loaded_keras_model_matches_flax_at_mixed7(keras_base):
  """Keras with the loaded variables computes the Flax model's mixed7 (float32 rounding)."""
  import jax
  size = 75
  flax_model, variables = _random_flax_variables(size, 'mixed7')
  base = keras_base
  assert [c.name for c, _ in keras_models.keras_units(base)][:2] == ['conv2d_94', 'conv2d_95']
  # stem 5 + mixed0-2 3x7 + mixed3 4 + mixed4-7 4x10.
  assert keras_models.load_flax_variables(base, variables) == 70
  images = np.random.default_rng(1).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
  expected = np.asarray(jax.jit(flax_model.apply)(variables, images))
  keras_mixed7 = tf_keras.Model(base.input, base.get_layer('mixed7').output)
  got = keras_mixed7(images, training=False).numpy()
  assert got.shape == expected.shape == (2, 3, 3, 768)
  scale = np.abs(expected).max()
  assert scale > 0
  np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=1e-4)


def test_load_rejects_wrong_kernel_shape(keras_base):
  _, variables = _random_flax_variables(75, 'stem')
  kernel = variables['params']['stem']['conv2d_2a_3x3']['conv']['kernel']
  variables['params']['stem']['conv2d_2a_3x3']['conv']['kernel'] = kernel[:, :, :, :16]
  with pytest.raises(ValueError, match=r'stem/conv2d_2a_3x3/conv/kernel has shape '
                                       r'\(3, 3, 32, 16\).*\(3, 3, 32, 32\)'):
    keras_models.load_flax_variables(keras_base, variables)


def test_build_model_rejects_variables_short_of_the_cut():
  _, variables = _random_flax_variables(75, 'stem')
  with pytest.raises(ValueError, match=r"lack blocks \['mixed0', .*'mixed7'\] that the cut "
                                       r"at 'mixed7' needs"):
    keras_models.build_model(75, variables, cut='mixed7')


@pytest.mark.slow
def test_weight_copy_round_trips_through_a_fresh_model():
  """Keras -> Flax -> another Keras model -> Flax gives the same arrays, in our layout."""
  import jax
  from inception.models.inception_v3 import InceptionV3
  source = keras_models.build_model(75, cut='mixed2', seed=0)
  keras_models.randomize_batchnorm(source, seed=0)
  variables = keras_models.to_flax_variables(source)
  shapes = jax.eval_shape(InceptionV3(stop_at='mixed2').init, jax.random.PRNGKey(0),
                          np.zeros((1, 75, 75, 3), np.float32))
  assert (jax.tree_util.tree_map(np.shape, variables) ==
          jax.tree_util.tree_map(lambda x: x.shape, {k: shapes[k] for k in variables}))
  target = keras_models.build_model(75, cut='mixed2', seed=1)
  fresh = keras_models.to_flax_variables(target)
  assert not np.array_equal(fresh['params']['stem']['conv2d_1a_3x3']['conv']['kernel'],
                            variables['params']['stem']['conv2d_1a_3x3']['conv']['kernel'])
  assert keras_models.load_flax_variables(target, variables) == 26  # stem 5 + mixed0-2 3x7.
  copied = keras_models.to_flax_variables(target)
  assert jax.tree_util.tree_structure(copied) == jax.tree_util.tree_structure(variables)
  for got, want in zip(jax.tree_util.tree_leaves(copied), jax.tree_util.tree_leaves(variables)):
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_keras_units_rejects_a_model_without_the_pairs():
  inputs = tf_keras.Input((8, 8, 3))
  model = tf_keras.Model(inputs, tf_keras.layers.Conv2D(4, 3)(inputs))
  with pytest.raises(ValueError, match=r'has 1 conv2d and 0 batch_normalization layers'):
    keras_models.keras_units(model)


def _write_tree(root: pathlib.Path, per_class: int, rng) -> None:
  """Two classes of flat-coloured PNGs: 'dog' reddish, 'horse' bluish, sizes vary."""
  from PIL import Image
  for label, name in enumerate(('dog', 'horse')):
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(per_class):
      colour = rng.integers(0, 80, 3)
      colour[2 * label] += 170
      h, w = rng.integers(60, 120, 2)
      pixels = np.broadcast_to(colour.astype(np.uint8), (h, w, 3))
      Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f'{name}_{i}.png')


@pytest.mark.slow
def test_run_recipe_smoke(tmp_path):
  """One epoch of the whole recipe (augmenting flow, frozen backbone, head, test split)."""
  rng = np.random.default_rng(0)
  dirs = {split: tmp_path / split for split in ('train', 'validation', 'test')}
  _write_tree(dirs['train'], 8, rng)
  _write_tree(dirs['validation'], 2, rng)
  _write_tree(dirs['test'], 2, rng)
  expected = {split: {f'{c}/{c}_{i}.png': label for label, c in enumerate(('dog', 'horse'))
                      for i in range(n)}
              for split, n in (('train', 8), ('validation', 2), ('test', 2))}
  run = recipe.run_recipe(dirs['train'], dirs['validation'], dirs['test'], seed=0,
                          class_names=('dog', 'horse'), image_size=75, batch_size=4,
                          epochs=1, expected_files=expected, verbose=0)
  assert set(run['history']) == {'loss', 'accuracy', 'val_loss', 'val_accuracy'}
  assert all(len(v) == 1 and math.isfinite(v[0]) for v in run['history'].values())
  assert run['final'] == {k: v[-1] for k, v in run['history'].items()}
  assert all(0.0 <= run['history'][k][0] <= 1.0 for k in ('accuracy', 'val_accuracy'))
  assert set(run['test']) == {'loss', 'accuracy'}
  assert math.isfinite(run['test']['loss']) and 0.0 <= run['test']['accuracy'] <= 1.0
  assert run['num_images'] == {'train': 16, 'validation': 4, 'test': 4}
  assert run['class_indices'] == {'dog': 0, 'horse': 1}
  assert (run['steps_per_epoch'], run['validation_steps']) == (4, 1)
  assert len(run['epoch_seconds']) == 1 and run['epoch_seconds'][0] > 0


def test_run_recipe_rejects_empty_train_dir(tmp_path):
  (tmp_path / 'train' / 'dog').mkdir(parents=True)
  (tmp_path / 'train' / 'horse').mkdir(parents=True)
  _write_tree(tmp_path / 'validation', 1, np.random.default_rng(0))
  with pytest.raises(ValueError, match='train directory .* has no images'):
    recipe.run_recipe(tmp_path / 'train', tmp_path / 'validation', seed=0,
                      class_names=('dog', 'horse'), image_size=75, epochs=1, verbose=0)


def test_run_recipe_refuses_files_other_than_the_manifest(tmp_path):
  """Checked before any model is built: a stray file or a missing one is an error."""
  rng = np.random.default_rng(0)
  for split in ('train', 'validation'):
    _write_tree(tmp_path / split, 2, rng)
  manifest = {'format': 1, 'splits': {
      split: [{'path': f'{split}/{c}/{c}_{i}.png', 'label': label}
              for label, c in enumerate(('dog', 'horse')) for i in range(2)]
      for split in ('train', 'validation')}}
  manifest['splits']['train'][0]['path'] = 'train/dog/elsewhere.png'
  (tmp_path / 'manifest.json').write_text(json.dumps(manifest))
  expected = recipe.manifest_files(tmp_path)
  assert expected['validation'] == {'dog/dog_0.png': 0, 'dog/dog_1.png': 0,
                                    'horse/horse_0.png': 1, 'horse/horse_1.png': 1}
  with pytest.raises(ValueError, match=r"train images under .* differ from the manifest: 1 "
                                       r"missing \['dog/elsewhere.png'\], 1 extra "
                                       r"\['dog/dog_0.png'\], 0 with another label"):
    recipe.run_recipe(tmp_path / 'train', tmp_path / 'validation', seed=0,
                      class_names=('dog', 'horse'), image_size=75, epochs=1,
                      expected_files=expected, verbose=0)


def test_manifest_files_rejects_other_formats(tmp_path):
  (tmp_path / 'manifest.json').write_text(json.dumps({'files': []}))
  with pytest.raises(ValueError, match=r'manifest.json has no splits/<split>/\[\{path, label\}\] '
                                       r'lists.*data.prepare'):
    recipe.manifest_files(tmp_path)


def test_summary_and_table():
  runs = [{'seed': s, 'final': {'loss': 0.2 + s, 'accuracy': 0.9, 'val_loss': 0.3,
                                'val_accuracy': 0.8 + 0.1 * s},
           'test': {'loss': 0.4, 'accuracy': 0.85}, 'epoch_seconds': [10.0, 12.0],
           'epoch_cpu_seconds': [8.0, 9.0]}
          for s in (0, 1)]
  summary = recipe.summarize(runs)
  assert summary['loss']['mean'] == pytest.approx(0.7)
  assert summary['loss']['std'] == pytest.approx(math.sqrt(0.5))
  assert summary['val_accuracy']['mean'] == pytest.approx(0.85)
  assert summary['test_accuracy'] == {'mean': 0.85, 'std': 0.0, 'n': 2}
  assert summary['epoch_seconds']['mean'] == pytest.approx(11.0)
  assert summary['epoch_cpu_seconds']['mean'] == pytest.approx(8.5)
  table = recipe.format_table(runs, summary).splitlines()
  assert len(table) == 5
  assert table[1].startswith('seed 0') and '0.2000' in table[1]
  assert table[3].startswith('mean ± std') and '0.7000 ± 0.7071' in table[3]
  assert re.search(r'11.0 ± 0.0 +8.5 ± 0.0$', table[3])
  assert table[4].startswith('seed notebook') and '0.9433' in table[4] and '0.3355' in table[4]
