"""Configs load, match the seed recipe, and every bad field fails with its key and choices."""

import importlib
import pathlib
import re

import pytest

from configs import common
from configs import default
from configs import dog_horse
from configs import validate


def _ok(c, **kw):
  validate.validate(c, device_count=kw.get('device_count', 1), workdir=kw.get('workdir'))


def test_dog_horse_is_the_seed_recipe():
  c = dog_horse.get_config()
  _ok(c)
  assert (c.data.classes, c.data.images_per_class, c.data.validation_fraction,
          c.data.image_size, c.data.preprocess) == (('dog', 'horse'), 500, 0.1, 150, 'rescale')
  a = c.data.augment
  assert (a.enabled, a.rotation_range, a.width_shift_range, a.height_shift_range,
          a.shear_range, a.zoom_range, a.horizontal_flip) == (True, 40, 0.2, 0.2, 0.2, 0.2, True)
  assert (c.model.cut, c.model.head, c.model.dense_units, c.model.dropout) == (
      'mixed7', 'flatten', 1024, 0.2)
  assert (c.optimizer.name, c.optimizer.lr, c.train.batch_size, c.train.epochs) == (
      'rmsprop', 1e-3, 20, 10)
  assert c.optimizer.param_rules == (('^backbone/', 0.0), ('.*', 1.0))
  # The config is the documentation: the command and the result it reached.
  assert 'python train.py --config configs/dog_horse.py' in dog_horse.__doc__
  assert 'Result on the real stand-in photos' in dog_horse.__doc__


@pytest.mark.parametrize('key,value,message', [
    ('model.cut', 'mixed11', "config.model.cut='mixed11' is not valid; valid: stem, mixed0"),
    ('model.cut', 'predictions', 'config.model.cut'),
    ('model.head', 'pool', "valid: flatten, gap"),
    ('model.weights', 'imagenet', 'config.model.weights=\'imagenet\' is neither a known name'),
    ('model.dtype', 'float16', 'valid: float32, bfloat16'),
    ('model.dropout', 1.0, 'config.model.dropout=1.0 must be in [0, 1)'),
    ('model.batchnorm_train_blocks', ('mixed9',), "has 'mixed9', after the cut"),
    ('data.image_size', 74, 'config.data.image_size=74 must be in [75, None]'),
    ('data.preprocess', 'caffe', "data.preprocess='caffe' is not valid; valid: rescale, "),
    ('optimizer.name', 'rmsprp', 'valid: rmsprop, adam, sgd'),
    ('optimizer.lr', -1e-3, 'config.optimizer.lr=-0.001 must be in (0, None]'),
    ('optimizer.param_rules', (('[', 1.0),), 'config.optimizer.param_rules[0]: bad regex'),
    ('train.epochs', -1, 'config.train.epochs=-1 must be in [1, None]'),
    ('train.batch_size', 0, 'config.train.batch_size=0'),
    ('train.on_nonfinite', 'ignore', 'valid: stop, skip'),
    ('checkpoint.keep', 0, 'config.checkpoint.keep=0'),
])
def test_bad_field_names_key_and_choices(key, value, message):
  c = dog_horse.get_config()
  section, name = key.split('.')
  c[section][name] = value
  with pytest.raises(ValueError) as e:
    _ok(c)
  assert message in str(e.value)


def test_batch_size_not_divisible_by_devices():
  c = dog_horse.get_config()
  with pytest.raises(ValueError, match='config.train.batch_size=20 is not divisible by the '
                     'device count 8; use a multiple of 8'):
    _ok(c, device_count=8)
  _ok(c, device_count=4)


def test_unknown_and_missing_keys():
  c = dog_horse.get_config()
  c.optimizer.learning_rate = 1e-3  # misspelt: the key is `lr`
  with pytest.raises(ValueError) as e:
    _ok(c)
  assert str(e.value) == ("Unknown config key 'optimizer.learning_rate'; valid keys here: "
                          "clip_global_norm, decay_epochs, decay_factor, end_lr_factor, "
                          "eps_in_sqrt, epsilon, lr, momentum, name, param_rules, rho, schedule, "
                          "warmup_epochs, weight_decay, weight_decay_exclude")
  c = dog_horse.get_config()
  del c.train['epochs']
  with pytest.raises(ValueError, match="Missing config key 'train.epochs'"):
    _ok(c)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(ValueError, match='--workdir .* cannot be created'):
    _ok(dog_horse.get_config(), workdir=blocker / 'run')


def test_parse_arg_types_and_unknown_keys():
  a = common.parse_arg('cut=mixed6,n=3,lr=0.5,aug=false', cut='mixed7', n=1, lr=1.0, aug=True)
  assert (a.cut, a.n, a.lr, a.aug) == ('mixed6', 3, 0.5, False)
  with pytest.raises(ValueError, match="Unknown config arg 'cutt'; valid keys: aug, cut"):
    common.parse_arg('cutt=mixed6', cut='mixed7', aug=True)
  with pytest.raises(ValueError, match="n='x': expected int"):
    common.parse_arg('n=x', n=1)
  assert common.arg_slug('cut=mixed6,preprocess=inception') == 'cut-mixed6_preprocess-inception'


CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / 'configs'
# Every configs/*.py that defines get_config (a new config file is picked up by itself).
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob('*.py')
                 if re.search(r'^def get_config\(', p.read_text(), re.M))


def test_the_configs_are_discovered():
  assert {'default', 'dog_horse', 'dog_horse_best', 'smoke', 'ablations'} <= set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_validates(name):
  mod = importlib.import_module(f'configs.{name}')
  _ok(mod.get_config())


def test_default_has_every_section():
  assert set(default.get_config().keys()) == {
      'seed', 'data', 'model', 'optimizer', 'train', 'checkpoint', 'eval'}
