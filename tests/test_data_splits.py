"""Data as users have it: split folders used as given, every image per class, balanced sampling."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from configs import smoke
from data import cache
from data import config as data_config
from data import dataset
from data import pipeline
from data import restructure
from data import sources
from data import testing
from data.sources import folder

# Split folder tree: train has every class (cat with a broken, a truncated and a CMYK file);
# validation lacks cow; test only has dog.
TREE = {'train': {'cat': 12, 'cow': 6, 'dog': 9}, 'validation': {'cat': 3, 'dog': 2},
        'test': {'dog': 4}}


def _write_tree(root: pathlib.Path, tree=None, size=(40, 40)) -> pathlib.Path:
  rng = np.random.default_rng(0)
  for split, classes in (tree or TREE).items():
    for i, (name, count) in enumerate(classes.items()):
      testing.write_good(root / split / name, count, rng, size=size, mean=60.0 + 60 * i,
                         prefix=f'{split}_{name}')
  return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))


def _broken(cat: pathlib.Path) -> None:
  (cat / 'zero_bytes.jpg').write_bytes(b'')
  (cat / 'truncated.jpg').write_bytes((cat / 'train_cat_000.jpg').read_bytes()[:200])
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.open(cat / 'train_cat_001.jpg').convert('CMYK').save(cat / 'cmyk.jpg', format='JPEG')
  (cat / 'notes.txt').write_text('not an image')


def _config_data(root, **kw):
  c = data_config.get_config()
  c.source, c.splits, c.path, c.classes = 'folder', 'folders', str(root), ()
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_default_arguments_and_cache_key_are_unchanged():
  """splits='resplit' (the default) adds nothing: existing manifests and cache folders hold."""
  src = sources.Source('folder', pathlib.Path('/data/pets'), (('cat', 'cat'), ('dog', 'dog')),
                       'x')
  args = dataset.subset_args(data_config.get_config(), src)
  key = restructure.arguments(src, **args)
  assert list(key) == ['format', 'source_kind', 'source_root', 'classes', 'images_per_class',
                       'validation_fraction', 'test_per_class', 'seed', 'link_mode']
  assert cache.args_hash(key) == '8fddcfed1bc9a906'  # Computed before data.splits existed.
  folders = restructure.arguments(src, **{**args, 'splits': 'folders'})
  assert folders['splits'] == 'folders' and 'images_per_class' not in folders


def test_folders_used_as_given(tmp_path):
  root = _write_tree(tmp_path / 'data')
  _broken(root / 'train' / 'cat')
  logs = []
  info = dataset.prepare(_config_data(root), log=logs.append)
  m = json.loads((info.root / restructure.MANIFEST).read_text())
  assert m['classes'] == ['cat', 'cow', 'dog']  # Sorted union.
  assert m['args']['splits'] == 'folders'
  # Every usable image, in its own split (the CMYK file normalised, two broken ones skipped).
  assert m['num_examples'] == {'train': 12 + 1 + 6 + 9, 'validation': 5, 'test': 4}
  counts = {s: {} for s in restructure.SPLITS}
  for s in restructure.SPLITS:
    for e in m['splits'][s]:
      name = m['classes'][e['label']]
      counts[s][name] = counts[s].get(name, 0) + 1
      assert e['source'].startswith(f'{s}/{name}/'), e  # Relative to data.path, as given.
      assert (root / e['source']).is_file()
  assert counts == {'train': {'cat': 13, 'cow': 6, 'dog': 9},
                    'validation': {'cat': 3, 'dog': 2}, 'test': {'dog': 4}}
  assert {s['source'] for s in m['skipped']} == {'train/cat/zero_bytes.jpg',
                                                 'train/cat/truncated.jpg'}
  assert m['normalised'] == ['train/cat/cmyk.jpg']
  assert m['ignored'] == ['train/cat/notes.txt']
  assert any('no validation images of: cow' in l for l in logs), logs
  assert any('no test images of: cat, cow' in l for l in logs), logs
  # The sha256 re-check and the no-op rerun work from the manifest as for resplit subsets.
  for s in restructure.SPLITS:
    paths, labels = restructure.verified_split(info.root, m, s)
    assert len(paths) == len(labels) == m['num_examples'][s]
  logs.clear()
  again = dataset.prepare(_config_data(root), log=logs.append)
  assert again.manifest_sha256 == info.manifest_sha256
  assert any('nothing to do' in l for l in logs)
  # The split keys are ignored in this mode (same cache folder, same manifest).
  other = dataset.prepare(_config_data(root, images_per_class=3, split_seed=5,
                                       validation_fraction=0.5), log=lambda _: None)
  assert other.root == info.root and other.manifest_sha256 == info.manifest_sha256


def test_folders_class_order_missing_splits_and_missing_class(tmp_path):
  root = _write_tree(tmp_path / 'data', {'train': {'cat': 3, 'dog': 3},
                                         'validation': {'cat': 1, 'dog': 1, 'bird': 1}})
  with pytest.raises(FileNotFoundError, match=r"class 'bird'.*train/bird.*only in validation"):
    folder.split_folder_source(root, ())
  src = folder.split_folder_source(root, ('dog', 'cat'))  # data.classes: label order.
  assert src.classes == (('dog', 'dog'), ('cat', 'cat'))
  assert src.split_folders == ('train', 'validation')  # test/ optional.
  m = restructure.restructure(src, tmp_path / 'out', images_per_class=0, splits='folders',
                              log=lambda _: None)
  assert m['classes'] == ['dog', 'cat'] and m['num_examples'] == {'train': 6, 'validation': 2,
                                                                 'test': 0}
  assert all(e['label'] == 0 for e in m['splits']['train'] if '/dog/' in e['path'])
  with pytest.raises(FileNotFoundError, match=r"class 'horse'.*no split has it"):
    folder.split_folder_source(root, ('dog', 'horse'))
  (tmp_path / 'noval' / 'train' / 'a').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r'no validation/ folder'):
    folder.split_folder_source(tmp_path / 'noval', ())
  # A train folder with no usable image names the class and the folder.
  bad = _write_tree(tmp_path / 'bad', {'train': {'cat': 2}, 'validation': {'cat': 1}})
  (bad / 'train' / 'dog').mkdir()
  (bad / 'train' / 'dog' / 'x.jpg').write_bytes(b'')
  with pytest.raises(ValueError, match=r"class 'dog'.*train/dog has no usable images"):
    restructure.restructure(folder.split_folder_source(bad, ()), tmp_path / 'out2',
                            images_per_class=0, splits='folders', log=lambda _: None)


def test_validate_names_the_keys(tmp_path):
  c = data_config.get_config()
  c.splits = 'folder'
  with pytest.raises(ValueError, match='data.splits'):
    data_config.validate(c)
  c.splits, c.source = 'folders', 'synthetic'
  with pytest.raises(ValueError, match=r"splits='folders' needs config.data.source='folder'"):
    data_config.validate(c)
  c = data_config.get_config()
  c.sampling = 'uniform'
  with pytest.raises(ValueError, match='data.sampling'):
    data_config.validate(c)
  c = data_config.get_config()
  c.images_per_class = 0
  data_config.validate(c)  # The per-class check happens where the classes are known.
  c.images_per_class = -1
  with pytest.raises(ValueError, match='data.images_per_class'):
    data_config.validate(c)


UNEVEN = {'a': 10, 'b': 7, 'c': 4}


def _uneven_source(tmp_path, counts=UNEVEN):
  rng = np.random.default_rng(1)
  for name, n in counts.items():
    testing.write_good(tmp_path / 'src' / name, n, rng, size=(24, 24), prefix=name)
  return folder.folder_source(tmp_path / 'src', ())


def _per_class(m):
  return {s: [sum(e['label'] == k for e in m['splits'][s]) for k in range(len(m['classes']))]
          for s in restructure.SPLITS}


def test_every_image_per_class_uneven_counts_exact(tmp_path):
  src = _uneven_source(tmp_path)
  run = lambda out, **kw: restructure.restructure(src, tmp_path / out, log=lambda _: None,
                                                  validation_fraction=0.25, seed=3, **kw)
  m = run('held', images_per_class=0, test_per_class=2)
  # Per class: 2 test first, then validation = round_half_up(0.25 * rest): a 8 -> 2,
  # b 5 -> 1 (1.25), c 2 -> 1 (0.5 rounds up).
  assert _per_class(m) == {'train': [6, 4, 1], 'validation': [2, 1, 1], 'test': [2, 2, 2]}
  # Same RNG scheme: a class's split is the one images_per_class = its size - N would give.
  a_only = restructure.restructure(folder.folder_source(tmp_path / 'src', ('a', 'b')),
                                   tmp_path / 'a8', images_per_class=5, validation_fraction=0.25,
                                   seed=3, test_per_class=2, log=lambda _: None)
  pick = lambda man, s: sorted(e['source'] for e in man['splits'][s] if e['label'] == 1)
  for s in restructure.SPLITS:
    assert pick(a_only, s) == pick(m, s)  # b: 7 usable = 5 + 2.
  for test in (-1, 0):  # No test split.
    m = run(f'all{test}', images_per_class=0, test_per_class=test)
    assert _per_class(m) == {'train': [7, 5, 3], 'validation': [3, 2, 1], 'test': [0, 0, 0]}
  assert m['args']['images_per_class'] == 0
  with pytest.raises(ValueError, match=r"class 'c'.*4 usable images.*no training images"):
    run('none', images_per_class=0, test_per_class=4)


def test_balanced_sampling_frequencies_determinism_resume_and_processes():
  labels = np.array([0] * 90 + [1] * 10 + [2] * 20, np.int32)
  n, bs = len(labels), 12
  epochs = lambda **kw: pipeline.epoch_indices(n, bs, bs, 0, 7, 0, labels=labels,
                                               sampling='balanced', **kw)
  gen = epochs()
  first = [next(gen) for _ in range(20)]
  drawn = np.concatenate([idx for idx, _, _ in first])
  freq = np.bincount(labels[drawn], minlength=3) / len(drawn)
  np.testing.assert_allclose(freq, 1 / 3, atol=0.03)  # 2400 draws of unequal classes.
  epoch0 = np.bincount(labels[first[0][0]], minlength=3)
  assert epoch0.min() > 25, epoch0  # Even within one epoch (120 draws).
  again = next(epochs())
  for a, b in zip(first[0], again):
    np.testing.assert_array_equal(a, b)
  plain = next(pipeline.epoch_indices(n, bs, bs, 0, 7, 0))[0]
  assert sorted(plain) == list(range(n)) and not np.array_equal(plain, first[0][0])
  # Resume mid-epoch: the same examples from that step on.
  for start in (3, 10 + 4):
    resumed = next(pipeline.epoch_indices(n, bs, bs, 0, 7, start, labels=labels,
                                          sampling='balanced'))
    epoch = start // (n // bs)
    keep = first[epoch][1] >= start
    for a, b in zip(first[epoch], resumed):
      np.testing.assert_array_equal(a[keep], b)
  # Two processes each take their half of the global batch.
  halves = [next(pipeline.epoch_indices(n, bs, bs // 2, p, 7, 0, labels=labels,
                                        sampling='balanced'))[0].reshape(-1, bs // 2)
            for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves, 1).ravel(), first[0][0])
  with pytest.raises(ValueError, match='labels'):
    next(pipeline.epoch_indices(n, bs, bs, 0, 7, 0, sampling='balanced'))


def test_pipeline_serves_the_balanced_examples(tmp_path):
  """train_batches (tf.data) yields the labels of `epoch_indices`' balanced draw, from a step."""
  root = _write_tree(tmp_path / 'data', {'train': {'a': 12, 'b': 4}, 'validation': {'a': 1}},
                     size=(16, 16))
  c = _config_data(root, sampling='balanced', image_size=16)
  c.augment.enabled = False
  info = dataset.prepare(c, log=lambda _: None)
  _, labels = pipeline.split_files(info, 'train')
  idx, _, _ = next(pipeline.epoch_indices(len(labels), 4, 4, 0, 5, 1, labels=labels,
                                          sampling='balanced'))
  got = pipeline.train_batches(info, c, batch_size=4, seed=5, start_step=1)
  served = np.concatenate([next(got)['label'] for _ in range(3)])
  np.testing.assert_array_equal(served, labels[idx])


def _train_config(root, epochs, feature_cache='off'):
  c = smoke.get_config(f'epochs={epochs},cut=stem')
  c.data.source, c.data.splits, c.data.path, c.data.classes = 'folder', 'folders', str(root), ()
  c.data.sampling = 'balanced'
  c.data.augment.enabled = False
  c.optimizer.lr = 3e-3
  c.model.head = 'flatten'
  c.train.feature_cache = feature_cache
  return c


@pytest.mark.slow
def test_train_on_split_folders_resume_and_feature_cache(tmp_path):
  from inception.train import trainer  # pylint: disable=g-import-not-at-top
  from test_feature_cache import _epoch_metrics as _metrics  # pylint: disable=g-import-not-at-top
  root = _write_tree(tmp_path / 'data', {'train': {'cat': 14, 'dog': 6},
                                         'validation': {'cat': 3, 'dog': 3}, 'test': {'dog': 2}},
                     size=(80, 80))
  quiet = dict(progress_bars=False, log=lambda _: None)
  trainer.train(_train_config(root, 2), tmp_path / 'straight', **quiet)
  trainer.train(_train_config(root, 1), tmp_path / 'resumed', **quiet)
  trainer.train(_train_config(root, 2), tmp_path / 'resumed', **quiet)
  logs = []
  trainer.train(_train_config(root, 2, 'on'), tmp_path / 'cached', progress_bars=False,
                log=logs.append)
  assert any(l.startswith('Feature cache: on') for l in logs), logs
  straight = _metrics(tmp_path / 'straight')
  assert set(straight) == {(s, e) for s in ('train_epoch', 'validation') for e in (1, 2)}
  assert _metrics(tmp_path / 'resumed') == straight
  cached = _metrics(tmp_path / 'cached')
  for k, v in straight.items():
    np.testing.assert_allclose(cached[k], v, atol=1e-5, err_msg=str(k))
  record = json.loads((tmp_path / 'straight' / 'data_manifest.json').read_text())
  assert record['args']['splits'] == 'folders'
  assert record['num_examples'] == {'train': 20, 'validation': 6, 'test': 2}


def test_cli_split_folders(tmp_path):
  root = _write_tree(tmp_path / 'data', {'train': {'a': 2, 'b': 2}, 'validation': {'b': 1}},
                     size=(16, 16))
  assert restructure.main(['--source', str(root), '--out', str(tmp_path / 'out'),
                           '--splits', 'folders']) == 0
  m = json.loads((tmp_path / 'out' / restructure.MANIFEST).read_text())
  assert m['num_examples'] == {'train': 4, 'validation': 1, 'test': 0}
