"""Feature cache: validity, keys, disk cache, and cached == uncached training (synthetic, tiny)."""

import json
import os

import jax
import numpy as np
import pytest


from configs import smoke  # pylint: disable=g-import-not-at-top
from configs import validate
from inception.tools import evaluate
from inception import weights
from inception.train import feature_cache
from inception.train import trainer
from inception.models import transfer

# Cached and uncached metrics agree to this (absolute). They are bit-identical on XLA:CPU in
# practice, but not guaranteed: the features come from eval-sized batches (eval.batch_size)
# and the head is compiled without the backbone, so XLA may block/fuse differently.
TOL = 1e-5


@pytest.fixture(scope='module', autouse=True)
def _cache(tmp_path_factory):
  old = os.environ.get('INCEPTION_FLAX_CACHE')
  os.environ['INCEPTION_FLAX_CACHE'] = str(tmp_path_factory.mktemp('cache'))
  feature_cache.clear_memory()
  yield
  feature_cache.clear_memory()
  if old is None:
    del os.environ['INCEPTION_FLAX_CACHE']
  else:
    os.environ['INCEPTION_FLAX_CACHE'] = old


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
  feature_cache.clear_memory()
  before = feature_cache.stats['forward_batches']
  logs = []
  trainer.train(_config('on', epochs=1), tmp_path, progress_bars=False, log=logs.append)
  assert feature_cache.stats['forward_batches'] == before
  for split in ('train', 'validation', 'test'):
    assert any(l.startswith(f'Feature cache: loaded {split} features') for l in logs), logs


def _setup(config):
  return trainer.build(config, log=lambda _: None)


def test_corrupt_cache_file_is_recomputed(tmp_path):
  config = _config('on')
  s = _setup(config)
  logs = []
  fc = feature_cache.FeatureCache.for_setup(config, s, s.state, logs.append)
  fc.dir = tmp_path / fc.key
  feature_cache.clear_memory()  # Earlier tests may hold this key's features in memory.
  feats, labels = fc.features('validation')
  assert feats.shape[0] == len(labels) == 8 and feats.dtype == np.float32
  npy, side = fc.dir / 'validation.npy', fc.dir / 'validation.json'
  assert npy.is_file() and side.is_file()
  for damage in ('flip', 'truncate', 'no_sidecar'):
    feature_cache.clear_memory()
    if damage == 'flip':
      raw = bytearray(npy.read_bytes())
      raw[-1] ^= 0xFF
      npy.write_bytes(bytes(raw))
    elif damage == 'truncate':
      npy.write_bytes(npy.read_bytes()[:100])
    else:
      side.unlink()
    before = feature_cache.stats['forward_batches']
    logs.clear()
    again, _ = fc.features('validation')
    assert feature_cache.stats['forward_batches'] > before, damage
    assert any('is corrupt or incomplete' in l for l in logs), (damage, logs)
    np.testing.assert_array_equal(again, feats)
  # Repaired: the next read is a clean load.
  feature_cache.clear_memory()
  logs.clear()
  fc.features('validation')
  assert any(l.startswith('Feature cache: loaded validation') for l in logs), logs


def test_key_changes_with_each_ingredient():
  config = _config()
  prov = {'weights': 'tf2015', 'source': '/x', 'sha256': 'a' * 64,
          'variant': {'mixed10_pool': 'max'}}
  base = feature_cache.key_ingredients(config, prov, 'm' * 64, 'b' * 64)
  key = feature_cache.cache_key(base)
  assert feature_cache.cache_key(feature_cache.key_ingredients(
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
  }
  seen = {key}
  for name, (p, manifest, backbone, override) in variants.items():
    c = _config()
    if override:
      section, field = override[0].split('.')
      c[section][field] = override[1]
    k = feature_cache.cache_key(feature_cache.key_ingredients(c, p, manifest, backbone))
    assert k not in seen, name
    seen.add(k)
  # The backbone values' hash sees a one-ulp change (e.g. another random-init seed).
  tree = {'a': np.zeros([3], np.float32)}
  other = {'a': np.array([0, 0, np.float32(1e-45)], np.float32)}
  assert weights.content_sha256(tree) != weights.content_sha256(other)


def test_auto_declines_and_says_why():
  c = _config('auto')
  params = transfer.init_variables(transfer.from_config(c, 2), c.data.image_size, 0)['params']
  assert feature_cache.decide(c, params, lambda _: None)
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
    assert not feature_cache.decide(c, params, logs.append), why
    assert len(logs) == 1 and 'not used' in logs[0] and why in logs[0], logs
    c.train.feature_cache = 'off'
    assert not feature_cache.decide(c, params, logs.append)
    c.train.feature_cache = 'on'
    with pytest.raises(ValueError, match=r'train\.feature_cache="on".*' + why):
      feature_cache.decide(c, params, logs.append)
  # Augmentation with every range zero and no flip is the identity: valid.
  c = _config('auto')
  a = c.data.augment
  a.enabled = True
  a.rotation_range = a.width_shift_range = a.height_shift_range = 0.0
  a.shear_range = a.zoom_range = 0.0
  a.horizontal_flip = False
  assert feature_cache.invalid_reason(c, params) is None


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
