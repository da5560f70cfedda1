"""tf.data pipeline: shapes, ranges, exact-once evaluation, sharding, resumption, resize."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import data
from data import config as config_lib
from data import pipeline
from data import testing

SIZE = 32  # Small images keep the tests fast; the code path is the same as at 150 px.


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """A 2-class folder tree restructured to 7 train / 3 validation / odd test per class."""
  tmp = tmp_path_factory.mktemp('pipeline')
  mp = pytest.MonkeyPatch()
  mp.setenv('INCEPTION_FLAX_CACHE', str(tmp / 'cache'))
  rng = np.random.default_rng(1)
  testing.write_good(tmp / 'tree' / 'bright', 13, rng, mean=170, prefix='b')
  testing.write_good(tmp / 'tree' / 'dark', 11, rng, mean=80, prefix='d')
  c = config_lib.get_config()
  c.source, c.path, c.classes = 'folder', str(tmp / 'tree'), ()
  c.images_per_class, c.validation_fraction = 10, 0.3
  c.image_size = SIZE
  info = data.prepare(c, log=lambda s: None)
  yield info, c
  mp.undo()


def _cfg(c, **kw):
  c = c.copy_and_resolve_references()
  for k, v in kw.items():
    obj = c
    *path, last = k.split('.')
    for p in path:
      obj = obj[p]
    obj[last] = v
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_prepare_info(setup):
  info, _ = setup
  assert info.kind == 'folder' and not info.is_synthetic and info.banner == ''
  assert info.class_names == ('bright', 'dark')
  assert info.num_examples == {'train': 14, 'validation': 6, 'test': 4}
  assert info.to_json()['num_examples']['train'] == 14
  assert data.steps_per_epoch(info, 4) == 3
  with pytest.raises(ValueError, match='larger than the 14 training examples'):
    data.steps_per_epoch(info, 15)


@pytest.mark.parametrize('preprocess,lo,hi', [('rescale', 0.0, 1.0), ('inception', -1.0, 1.0)])
def test_train_batch_shapes_dtypes_ranges(setup, preprocess, lo, hi):
  info, c = setup
  b = next(data.train_batches(info, _cfg(c, preprocess=preprocess), batch_size=4, seed=0))
  assert set(b) == {'image', 'label'}
  assert b['image'].shape == (4, SIZE, SIZE, 3) and b['image'].dtype == np.float32
  assert b['label'].shape == (4,) and b['label'].dtype == np.int32
  assert lo <= b['image'].min() and b['image'].max() <= hi
  assert b['image'].max() - b['image'].min() > 0.5 * (hi - lo)


def test_eval_visits_every_example_once_with_padding(setup):
  info, c = setup
  paths, labels = pipeline.split_files(info, 'validation')  # 6 examples, batch 4: 4 + 2 pad.
  batches = list(data.eval_batches(info, c, split='validation', batch_size=4))
  assert [b['mask'].tolist() for b in batches] == [[True] * 4, [True, True, False, False]]
  images = np.concatenate([b['image'] for b in batches])
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches])[:6], labels)
  assert np.all(images[6:] == 0)
  for path, img in zip(paths, images):
    want = np.asarray(Image.open(path).convert('RGB').resize((SIZE, SIZE), Image.NEAREST))
    np.testing.assert_allclose(img, want / 255.0, atol=1e-6)
  # Two processes: each gets half of every global batch; together every example once.
  per_proc = [list(data.eval_batches(info, c, split='validation', batch_size=4,
                                     process_index=p, process_count=2)) for p in range(2)]
  assert all(b['image'].shape[0] == 2 for bs in per_proc for b in bs)
  merged = np.concatenate([np.concatenate([per_proc[0][i]['image'], per_proc[1][i]['image']])
                           for i in range(2)])
  np.testing.assert_array_equal(merged, images)
  assert sum(b['mask'].sum() for bs in per_proc for b in bs) == 6
  test = list(data.eval_batches(info, c, split='test', batch_size=3))  # 4 = 3 + 1 (+2 pad).
  assert [b['mask'].sum() for b in test] == [3, 1]


def test_train_epochs_are_permutations_and_seeded(setup):
  info, c = setup
  cfg = _cfg(c, **{'augment.enabled': False})
  train = np.stack([b['image'] for b in data.eval_batches(info, cfg, split='train',
                                                           batch_size=14)][0])
  key = lambda img: int(np.argmin(np.abs(train - img).reshape(14, -1).sum(1)))
  it = data.train_batches(info, cfg, batch_size=4, seed=0)
  for _ in range(2):  # Epochs of 3 steps (14 // 4), 12 distinct examples each.
    seen = [key(img) for b in _take(it, 3) for img in b['image']]
    assert len(set(seen)) == 12
  a = [b['image'] for b in _take(data.train_batches(info, cfg, batch_size=4, seed=0), 3)]
  b = [b['image'] for b in _take(data.train_batches(info, cfg, batch_size=4, seed=1), 3)]
  assert not all(np.array_equal(x, y) for x, y in zip(a, b))


def test_resume_and_sharding_reproduce_the_uninterrupted_run(setup):
  info, c = setup  # Augmentation on: its randomness must follow (seed, step, example).
  full = _take(data.train_batches(info, c, batch_size=4, seed=7), 8)
  resumed = _take(data.train_batches(info, c, batch_size=4, seed=7, start_step=5), 3)
  for x, y in zip(full[5:], resumed):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  shards = [_take(data.train_batches(info, c, batch_size=4, seed=7, start_step=2,
                                     process_index=p, process_count=2), 2) for p in range(2)]
  for i in range(2):
    np.testing.assert_array_equal(np.concatenate([shards[0][i]['image'], shards[1][i]['image']]),
                                  full[2 + i]['image'])
  with pytest.raises(ValueError, match='multiple of process_count=3'):
    next(data.train_batches(info, c, batch_size=4, seed=0, process_count=3))


def test_augmentation_on_changes_images_off_keeps_them(setup):
  info, c = setup
  off = _cfg(c, **{'augment.enabled': False})
  on = next(data.train_batches(info, c, batch_size=8, seed=3))['image']
  plain = next(data.train_batches(info, off, batch_size=8, seed=3))['image']
  ref = np.stack([np.asarray(Image.open(p).convert('RGB').resize((SIZE, SIZE), Image.NEAREST))
                  for p in pipeline.split_files(info, 'train')[0]]) / 255.0
  for img in plain:  # Each un-augmented image is exactly one of the resized training images.
    assert np.abs(ref - img).reshape(len(ref), -1).max(1).min() < 1e-6
  assert all(np.abs(x - y).mean() > 1e-3 for x, y in zip(on, plain))


@pytest.mark.parametrize('src_hw,size', [((48, 64), 32), ((37, 23), 50)])
def test_nearest_resize_matches_keras_load_img(tmp_path, src_hw, size):
  img = testing.random_image(np.random.default_rng(2), *src_hw)
  path = tmp_path / 'x.png'
  Image.fromarray(img).save(path)
  got = pipeline.decode_resize(tf.constant(str(path)), size, 'nearest').numpy()
  want = np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))  # Keras' default.
  np.testing.assert_array_equal(got, want)
  bil = pipeline.decode_resize(tf.constant(str(path)), size, 'bilinear').numpy()
  want = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)).astype(float)
  assert np.abs(bil - want).mean() < 2.0  # Same filter family as PIL's; not bit-equal.


def test_folder_batches_skips_bad_files_and_reads_exotic_ones(tmp_path, monkeypatch, setup):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  _, c = setup
  cases = testing.write_bad_and_exotic(tmp_path / 'pred', np.random.default_rng(3))
  logs = []
  batches = list(data.folder_batches(tmp_path / 'pred', c, batch_size=4, log=logs.append))
  usable = sorted(n for n, o in cases.items() if o in ('link', 'normalise'))
  paths = [p for b in batches for p, m in zip(b['path'], b['mask']) if m]
  assert [p.split('/')[-1] for p in paths] == usable
  assert len(logs) == sum(o == 'skip' for o in cases.values())
  assert all(b['image'].shape == (4, SIZE, SIZE, 3) for b in batches)
  last = batches[-1]
  assert list(last['path'][~last['mask']]) == [''] * int((~last['mask']).sum())
  one = next(data.folder_batches(tmp_path / 'pred' / 'cmyk.jpg', c, batch_size=2))
  assert one['mask'].tolist() == [True, False]
  with Image.open(tmp_path / 'pred' / 'cmyk.jpg') as im:
    want = np.asarray(im.convert('RGB').resize((SIZE, SIZE), Image.NEAREST)) / 255.0
  np.testing.assert_allclose(one['image'][0], want, atol=1e-6)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    list(data.folder_batches(tmp_path / 'nope', c, batch_size=2))


def test_unknown_split_names_the_manifest(setup):
  info, c = setup
  with pytest.raises(ValueError, match=r"split='valid' is not in .*manifest.json"):
    next(data.eval_batches(info, c, split='valid', batch_size=2))
