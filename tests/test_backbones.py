"""The backbone seam: a second, tiny backbone registered in one call trains the smoke config end
to end (plain and feature-cached), evaluates from its workdir, and is validated by its entry."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import pytest

from configs import smoke
from configs import validate
from inception import backbones
from inception.tools import evaluate
from inception.train import trainer


class TinyNet(nn.Module):
  """Two conv+BN+relu blocks, 8 and 16 channels, stride 2: [N, H, W, 3] -> [N, H/4, W/4, 16]."""
  stop_at: str = 'conv2'
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, train_blocks=()):
    for name, features in (('conv1', 8), ('conv2', 16)):
      x = nn.Conv(features, (3, 3), strides=2, use_bias=False, dtype=self.dtype,
                  name=f'{name}_conv')(x)
      x = nn.BatchNorm(use_running_average=name not in train_blocks, name=f'{name}_bn')(x)
      x = nn.relu(x)
      if name == self.stop_at:
        return x
    raise ValueError(f'unknown stop_at {self.stop_at!r}')


def _random(weights, cut, log):
  del weights, cut, log
  return None, {'weights': 'random', 'source': 'random init', 'sha256': None, 'variant': {}}


@pytest.fixture
def tiny(monkeypatch, tmp_path):
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  backbones.register(backbones.Backbone(
      name='tiny', build=TinyNet, endpoints=('conv1', 'conv2'), blocks=('conv1', 'conv2'),
      min_image_size=8, weight_names=(), load_pretrained=_random, accepts_paths=False))
  yield
  backbones.unregister('tiny')


def _config(**model):
  c = smoke.get_config('epochs=2')
  c.model.backbone = 'tiny'
  c.model.cut = 'conv2'
  c.data.image_size = 32
  for k, v in model.items():
    c.model[k] = v
  return c


def test_validation_asks_the_entry(tiny):
  validate.validate(_config(), device_count=1)
  with pytest.raises(ValueError, match=r"config.model.cut='mixed7' is not valid; valid: conv1, "
                                       r'conv2'):
    validate.validate(_config(cut='mixed7'), device_count=1)
  with pytest.raises(ValueError, match=r"config.model.weights='tf2015' is neither a known name "
                                       r'\(random, \) nor an existing file'):
    validate.validate(_config(weights='tf2015'), device_count=1)
  with pytest.raises(ValueError, match=r"config.model.backbone='nope' is not valid; valid: "
                                       r'inception_v3, tiny'):
    validate.validate(_config(backbone='nope'), device_count=1)


@pytest.mark.slow
def test_a_second_backbone_trains_caches_and_evaluates_end_to_end(tiny, tmp_path):
  logs = []
  plain = trainer.train(_config(), tmp_path / 'plain', progress_bars=False, log=logs.append)
  assert plain['steps'] == 6 and plain['final_validation']['count'] == 8
  assert any("'frozen': " in l for l in logs)  # backbone/conv*_... frozen by the default rules
  cached_config = _config()
  cached_config.data.augment.enabled = False
  cached_config.train.feature_cache = 'on'
  cached = trainer.train(cached_config, tmp_path / 'cached', progress_bars=False,
                         log=logs.append)
  assert any(l.startswith('Feature cache: computing train features') for l in logs), logs
  assert cached['steps'] == 6
  # Evaluation rebuilds the tiny backbone from the run's record and its checkpoint.
  val = evaluate.evaluate(tmp_path / 'plain', log=lambda _: None)
  assert val['count'] == 8
  assert val['accuracy'] == pytest.approx(plain['final_validation']['accuracy'])
  assert val['loss'] == pytest.approx(plain['final_validation']['loss'], rel=1e-5)
