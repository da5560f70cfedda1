"""Feature cache: validity, keys, disk cache, and cached == uncached training (synthetic, tiny)."""

import json
import os

import jax
import numpy as np
import pytest


from configs import smoke  # pylint: disable=g-import-not-at-top
from configs import validate
from inception import paths
from inception.tools import evaluate
from inception import transfer
from inception.train import sharding
from inception.train import trainer
from inception.train.feature_cache import key as cache_key
from inception.train.feature_cache import policy
from inception.train.feature_cache import store
from inception.weights import store as weights_store

# Cached and uncached metrics agree to this (absolute). They are bit-identical on XLA:CPU in
# practice, but not guaranteed: the features come from eval-sized batches (eval.batch_size)
# and the head is compiled without the backbone, so XLA may block/fuse differently.
TOL = 1e-5


@pytest.fixture(scope='module', autouse=True)
def _cache(module_cache):
  yield


def _config(mode='auto', epochs=2):
  c = smoke.get_config(f'epochs={epochs},cut=stem')
  c.optimizer.lr = 3e-3
  c.data.augment.enabled = False
  c.model.head = 'flatten'  # The seed's head; dropout masks must match too.
  c.train.feature_cache = mode
  return c


def _epoch_metrics(workdir):
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {(r['split'], r['epoch']): (r['loss'], r['accuracy']) for r in records
          if r['split'] in ('train_epoch', 'validation')}


def _params(workdir):
  return jax.device_get(evaluate.restore(workdir, 'latest').variables['params'])


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Uncached and cached 2-epoch runs, and one resumed: epoch 1 uncached, epoch 2 cached."""
  root = tmp_path_factory.mktemp('runs')
  logs = {'off': [], 'on': [], 'resumed': []}
  off = trainer.train(_config('off'), root / 'off', progress_bars=False, log=logs['off'].append)
  on = trainer.train(_config('auto'), root / 'on', progress_bars=False, log=logs['on'].append)
  trainer.train(_config('off', epochs=1), root / 'resumed', progress_bars=False)
  resumed = trainer.train(_config('on'), root / 'resumed', progress_bars=False,
                          log=logs['resumed'].append)
  return root, {'off': off, 'on': on, 'resumed': resumed}, logs


@pytest.mark.slow
def test_cached_equals_uncached(runs):
  root, summaries, logs = runs
  assert any(l.startswith('Feature cache: on') for l in logs['on']), logs['on']
  assert not any('Feature cache: on' in l for l in logs['off'])
  want = _epoch_metrics(root / 'off')
  assert len(want) == 4  # train_epoch and validation, epochs 1 and 2
  for name in ('on', 'resumed'):
    got = _epoch_metrics(root / name)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_allclose(got[k], want[k], atol=TOL, err_msg=f'{name} {k}')
    for split in ('final_validation', 'test'):
      for m in ('loss', 'accuracy'):
        assert summaries[name][split][m] == pytest.approx(summaries['off'][split][m], abs=TOL)
  p_off = _params(root / 'off')
  for name in ('on', 'resumed'):
    p = _params(root / name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 p['head'], p_off['head'])
    # The checkpoint still holds the frozen backbone, bit for bit.
    jax.tree.map(np.testing.assert_array_equal, p['backbone'], p_off['backbone'])


@pytest.mark.slow
def test_second_run_reuses_disk_cache(runs, tmp_path):
  del runs  # Filled the disk cache.
  logs = []
  trainer.train(_config('on', epochs=1), tmp_path, progress_bars=False, log=logs.append)
  assert not any(l.startswith('Feature cache: computing') for l in logs), logs
  for split in ('train', 'validation', 'test'):
    assert any(l.startswith(f'Feature cache: loaded {split} features') for l in logs), logs


def _cache_for(config, directory, logs=None):
  """The run's setup and its cached-features source, writing under `directory`."""
  s = trainer.build(config, log=(logs.append if logs is not None else lambda _: None),
                    feature_dir=directory)
  return s, s.source


def test_corrupt_cache_file_is_recomputed(tmp_path):
  logs = []
  _, fc = _cache_for(_config('on'), tmp_path, logs)
  feats, labels = fc.features('validation')
  assert feats.shape[0] == len(labels) == 8 and feats.dtype == np.float32
  # A read-only map of the file, not a copy; keep a copy, as the damage below is done in place.
  assert isinstance(feats, np.memmap) and not feats.flags.writeable
  feats = np.array(feats)
  npy, side = fc.store.paths('validation')
  assert npy.is_file() and side.is_file()
  for damage in ('flip', 'truncate', 'no_sidecar'):
    fc.clear_memory()
    if damage == 'flip':
      raw = bytearray(npy.read_bytes())
      raw[-1] ^= 0xFF
      npy.write_bytes(bytes(raw))
    elif damage == 'truncate':
      npy.write_bytes(npy.read_bytes()[:100])
    else:
      side.unlink()
    before = fc.forward_batches
    logs.clear()
    again, _ = fc.features('validation')
    assert fc.forward_batches > before, damage
    assert any('is corrupt or incomplete' in l for l in logs), (damage, logs)
    np.testing.assert_array_equal(again, feats)
  # Repaired: the next read is a clean load.
  fc.clear_memory()
  logs.clear()
  fc.features('validation')
  assert any(l.startswith('Feature cache: loaded validation') for l in logs), logs


def test_key_changes_with_each_ingredient():
  config = _config()
  prov = {'weights': 'tf2015', 'source': '/x', 'sha256': 'a' * 64,
          'variant': {'mixed10_pool': 'max'}}
  base = cache_key.ingredients(config, prov, 'm' * 64, 'b' * 64)
  key = cache_key.digest(base)
  assert cache_key.digest(cache_key.ingredients(
      config, {**prov, 'source': '/elsewhere'}, 'm' * 64, 'b' * 64)) == key
  variants = {
      'weights sha256': ({**prov, 'sha256': 'c' * 64}, 'm' * 64, 'b' * 64, None),
      'backbone variant': ({**prov, 'variant': {'mixed10_pool': 'avg'}}, 'm' * 64, 'b' * 64,
                           None),
      'weights name': ({**prov, 'weights': 'keras'}, 'm' * 64, 'b' * 64, None),
      'manifest': (prov, 'n' * 64, 'b' * 64, None),
      'backbone values': (prov, 'm' * 64, 'd' * 64, None),
      'cut': (prov, 'm' * 64, 'b' * 64, ('model.cut', 'mixed0')),
      'image size': (prov, 'm' * 64, 'b' * 64, ('data.image_size', 99)),
      'resize': (prov, 'm' * 64, 'b' * 64, ('data.resize_method', 'bilinear')),
      'preprocess': (prov, 'm' * 64, 'b' * 64, ('data.preprocess', 'inception')),
      'dtype': (prov, 'm' * 64, 'b' * 64, ('model.dtype', 'bfloat16')),
      'pooled (gap head)': (prov, 'm' * 64, 'b' * 64, ('model.head', 'gap')),
      'storage dtype': (prov, 'm' * 64, 'b' * 64, ('train.feature_cache_dtype', 'float16')),
  }
  seen = {key}
  for name, (p, manifest, backbone, override) in variants.items():
    c = _config()
    if override:
      section, field = override[0].split('.')
      c[section][field] = override[1]
    k = cache_key.digest(cache_key.ingredients(c, p, manifest, backbone))
    assert k not in seen, name
    seen.add(k)
  # The backbone values' hash sees a one-ulp change (e.g. another random-init seed).
  tree = {'a': np.zeros([3], np.float32)}
  other = {'a': np.array([0, 0, np.float32(1e-45)], np.float32)}
  assert weights_store.content_sha256(tree) != weights_store.content_sha256(other)


def test_auto_declines_and_says_why():
  c = _config('auto')
  params = transfer.init_variables(transfer.from_config(c, 2), c.data.image_size, 0)['params']
  assert policy.use_cache(c, params, lambda _: None)
  cases = {
      'data.augment': lambda c: setattr(c.data.augment, 'enabled', True),
      'optimizer.param_rules trains': lambda c: setattr(
          c.optimizer, 'param_rules', (('^backbone/stem/conv2d_4a', 0.1), ('^backbone/', 0.0),
                                       ('.*', 1.0))),
      'model.batchnorm_train_blocks': lambda c: setattr(c.model, 'batchnorm_train_blocks',
                                                        ('stem',)),
  }
  for why, change in cases.items():
    c = _config('auto')
    change(c)
    logs = []
    assert not policy.use_cache(c, params, logs.append), why
    assert len(logs) == 1 and 'not used' in logs[0] and why in logs[0], logs
    c.train.feature_cache = 'off'
    assert not policy.use_cache(c, params, logs.append)
    c.train.feature_cache = 'on'
    with pytest.raises(ValueError, match=r'train\.feature_cache="on".*' + why):
      policy.use_cache(c, params, logs.append)
  # Augmentation with every range zero and no flip is the identity: valid.
  c = _config('auto')
  a = c.data.augment
  a.enabled = True
  a.rotation_range = a.width_shift_range = a.height_shift_range = 0.0
  a.shear_range = a.zoom_range = 0.0
  a.horizontal_flip = False
  assert policy.use_cache(c, params, lambda _: None)


def test_validate_names_key():
  c = _config('sometimes')
  with pytest.raises(ValueError, match=r"train\.feature_cache='sometimes'.*auto, on, off"):
    validate.validate(c, device_count=1)
  c = _config('on')
  c.data.augment.enabled = True
  with pytest.raises(ValueError, match=r'train\.feature_cache="on".*data\.augment'):
    validate.validate(c, device_count=1)
  validate.validate(_config('on'), device_count=1)


def test_on_with_unfrozen_backbone_fails_at_start_up(tmp_path):
  c = _config('on')
  c.optimizer.param_rules = (('^backbone/stem/conv2d_4a', 0.1), ('^backbone/', 0.0), ('.*', 1.0))
  with pytest.raises(ValueError, match=r'train\.feature_cache="on".*optimizer\.param_rules'):
    trainer.train(c, tmp_path, progress_bars=False)
  assert not (tmp_path / 'checkpoints').exists() or not any(
      p.name.isdigit() for p in (tmp_path / 'checkpoints').iterdir())


def test_gap_head_caches_pooled_features_equal_to_pooling_in_the_head(tmp_path):
  spatial_cfg, gap_cfg = _config('on'), _config('on')
  gap_cfg.model.head = 'gap'
  _, spatial = _cache_for(spatial_cfg, tmp_path)
  s, pooled = _cache_for(gap_cfg, tmp_path)
  assert pooled.key != spatial.key and pooled.ingredients['pooled']
  full, _ = spatial.features('validation')
  small, labels = pooled.features('validation')
  assert full.ndim == 4 and small.shape == (len(labels), full.shape[-1])
  np.testing.assert_allclose(small, np.asarray(full).mean(axis=(1, 2)), rtol=1e-6, atol=1e-7)
  # The head on pooled features == the same head pooling the spatial ones == the whole model.
  variables = {'params': s.state.params, 'batch_stats': s.state.batch_stats}
  head = transfer.HeadOnly(s.model)
  on_pooled = head.apply(variables, np.asarray(small))
  on_spatial = head.apply(variables, np.asarray(full))
  np.testing.assert_allclose(on_pooled, on_spatial, rtol=1e-5, atol=1e-6)
  batch = next(pooled.eval_batches('validation'))
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (8, full.shape[-1])
  size = lambda fc: fc.store.paths('validation')[0].stat().st_size
  assert size(pooled) < size(spatial) / (full.shape[1] * full.shape[2] / 2)


@pytest.mark.slow
def test_gap_head_cached_equals_uncached(tmp_path):
  """A short run with the pooled cache matches the uncached run (metrics and head params)."""
  summaries = {}
  for mode in ('off', 'on'):
    c = _config(mode)
    c.model.head = 'gap'
    summaries[mode] = trainer.train(c, tmp_path / mode, progress_bars=False, log=lambda _: None)
  want, got = _epoch_metrics(tmp_path / 'off'), _epoch_metrics(tmp_path / 'on')
  assert got.keys() == want.keys() and len(want) == 4
  for k in want:
    np.testing.assert_allclose(got[k], want[k], atol=TOL, err_msg=str(k))
  for m in ('loss', 'accuracy'):
    assert summaries['on']['test'][m] == pytest.approx(summaries['off']['test'][m], abs=TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               _params(tmp_path / 'on')['head'], _params(tmp_path / 'off')['head'])


@pytest.mark.parametrize('storage, disk, rtol', [('float16', np.float16, 1e-3),
                                                 ('bfloat16', np.uint16, 8e-3)])
def test_16_bit_storage_halves_the_file_and_serves_float32(tmp_path, storage, disk, rtol):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  _, exact = _cache_for(_config('on'), tmp_path)
  c = _config('on')
  c.train.feature_cache_dtype = storage
  _, half = _cache_for(c, tmp_path)
  assert half.key != exact.key and half.ingredients['storage_dtype'] == storage
  want, _ = exact.features('validation')
  stored, _ = half.features('validation')
  assert stored.dtype == disk and stored.shape == want.shape
  meta = json.loads(half.store.paths('validation')[1].read_text())
  assert meta['dtype'] == storage
  expect = np.asarray(want).astype(np.float16 if storage == 'float16' else ml_dtypes.bfloat16)
  batch = next(half.eval_batches('validation'))
  assert batch['image'].dtype == np.float32
  # Exactly the rounded float32 features, close to them within the format's precision.
  np.testing.assert_array_equal(batch['image'], expect.astype(np.float32))
  np.testing.assert_allclose(batch['image'], want, rtol=rtol, atol=1e-6)
  size = lambda fc: fc.store.paths('validation')[0].stat().st_size
  assert size(half) < 0.51 * size(exact)
  # A second use verifies and maps the 16-bit file (no recomputation).
  half.clear_memory()
  before = half.forward_batches
  again = next(half.eval_batches('validation'))
  assert half.forward_batches == before
  np.testing.assert_array_equal(again['image'], batch['image'])


def test_float16_overflow_and_bad_dtype_name_the_key(tmp_path):
  with pytest.raises(ValueError, match=r"train\.feature_cache_dtype='float16' overflows.*"
                                       r"'bfloat16'"):
    store.encode(np.array([[1.0, 7e4]], np.float32), 'float16')
  c = _config('on')
  c.train.feature_cache_dtype = 'float64'
  with pytest.raises(ValueError, match=r"train\.feature_cache_dtype='float64' is not valid; "
                                       r'valid: float32, float16, bfloat16'):
    policy.validate_config(c)
  with pytest.raises(ValueError, match=r"train\.feature_cache_dtype='float64'"):
    _cache_for(c, tmp_path)  # The store refuses it too (trainer.build does not validate).
  policy.validate_config(_config('on'))
  del c.train['feature_cache_dtype']  # A run recorded before the key existed: float32.
  policy.validate_config(c)
  assert store.storage_dtype(c.train) == 'float32'


def test_writer_streams_the_bytes_np_save_writes(tmp_path):
  """Row blocks in, the file np.save of the whole array would be, hashed as written."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 3, 2, 4)).astype(np.float32)
  with open(tmp_path / 'a.npy', 'wb') as f:
    w = store.NpyWriter(f, 10, 'float32')
    for block in np.split(x, [3, 4, 10]):
      w.add(block)
    sha, shape = w.finish()
  np.save(tmp_path / 'b.npy', x)
  assert (tmp_path / 'a.npy').read_bytes() == (tmp_path / 'b.npy').read_bytes()
  assert sha == paths.file_digest(tmp_path / 'a.npy') and shape == x.shape
  with open(tmp_path / 'c.npy', 'wb') as f:
    w = store.NpyWriter(f, 10, 'float32')
    w.add(x[:9])
    with pytest.raises(RuntimeError, match='got 9 features for 10 examples'):
      w.finish()
    with pytest.raises(RuntimeError, match='more than 10 rows'):
      w.add(x[:2])
  with open(tmp_path / 'e.npy', 'wb') as f:  # An empty split.
    w = store.NpyWriter(f, 0, 'float16')
    w.finish()
  assert np.load(tmp_path / 'e.npy', mmap_mode='r').shape == (0,)


def _rss_file_kib() -> int:
  """This process's resident file-backed pages (KiB), Linux only."""
  for line in open('/proc/self/status'):
    if line.startswith('RssFile:'):
      return int(line.split()[1])
  pytest.skip('no RssFile in /proc/self/status')


@pytest.mark.skipif(not os.path.exists('/proc/self/status'), reason='Linux /proc only')
def test_reading_a_mapping_keeps_the_resident_set_bounded(tmp_path):
  """Serving every row of a 128 MiB map, in random batches: without releases the whole file
  becomes resident in this process; releasing every 4 MiB served keeps it to a few batches'
  pages (the kernel maps whole page-cache folios, so more than the rows touched)."""
  n, row = 512, (64, 1024)  # 256 KiB rows
  np.save(tmp_path / 'f.npy', np.ones((n,) + row, np.float32))
  feats = np.load(tmp_path / 'f.npy', mmap_mode='r')
  peaks = {}
  for release_mib in (1 << 20, 4):  # never, then every 4 MiB
    mapped = store.Mapped(feats, 'float32', release_bytes=release_mib * 2**20)
    mapped.release()
    base, peak = _rss_file_kib(), 0
    for b in np.random.default_rng(0).permutation(n).reshape(-1, 8):
      assert mapped.rows(b).sum() == 8 * 64 * 1024
      peak = max(peak, _rss_file_kib() - base)
    peaks[release_mib] = peak / 1024
    mapped.release()
  assert peaks[1 << 20] > 100 and peaks[4] < 40, peaks  # MiB


def test_processes_that_disagree_all_recompute(tmp_path, monkeypatch):
  """This process's copy is valid, another's is not (the agreement says no): it recomputes
  with them (single process standing in; the real several-process run is in
  test_feature_cache_scale.py)."""
  logs = []
  _, fc = _cache_for(_config('on'), tmp_path, logs)
  want, _ = fc.features('validation')
  want = np.array(want)
  fc.clear_memory()
  flags = []
  monkeypatch.setattr(sharding, 'all_agree', lambda ok: flags.append(ok) or False)
  barriers = []
  monkeypatch.setattr(sharding, 'barrier', barriers.append)
  before, written = fc.forward_batches, fc.store.files_written
  logs.clear()
  got, _ = fc.features('validation')
  assert flags == [True] and len(barriers) == 1 and fc.key[:16] in barriers[0]
  assert fc.forward_batches > before
  assert fc.store.files_written == written + 1
  assert any('another process has no valid copy of validation' in l for l in logs), logs
  np.testing.assert_array_equal(got, want)
