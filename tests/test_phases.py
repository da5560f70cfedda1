"""The multi-phase runner (inception.tools.phases) and the two-phase recipe's configs."""

import json
import pathlib

import pytest

from configs import dog_horse_finetune
from configs import smoke
from configs import validate
from inception.tools import phases

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_finetune_recipe_phases_are_valid_configs():
  (n1, frozen), (n2, finetune) = dog_horse_finetune.get_phases('seed=2')
  assert (n1, n2) == ('frozen', 'finetune')
  for c in (frozen, finetune):
    validate.validate(c, device_count=1)
    assert c.seed == c.data.split_seed == 2 and c.data.image_size == 299
  assert finetune.model.init_from == '{frozen}:best'
  assert finetune.model.batchnorm_train_blocks == ('mixed6', 'mixed7')
  assert finetune.data.augment.enabled and not frozen.data.augment.enabled
  assert dict(finetune.optimizer.param_rules)['^backbone/mixed[67]/'] == 0.1


def test_the_random_head_control_is_the_finetune_phase_alone():
  (_, two_phase), = dog_horse_finetune.get_phases('seed=1')[1:]
  (name, control), = dog_horse_finetune.get_phases('seed=1,start=random')
  assert name == 'finetune' and control.model.init_from == ''
  control.model.init_from = two_phase.model.init_from
  assert control.to_dict() == two_phase.to_dict()
  with pytest.raises(ValueError, match="start='warm'; valid: 'frozen'"):
    dog_horse_finetune.get_phases('start=warm')


def _tiny_phases(arg=None):
  del arg
  first = smoke.get_config('epochs=1,cut=stem')
  second = smoke.get_config('epochs=1,cut=stem')
  second.seed = 1
  second.model.init_from = '{first}:latest'
  return [('first', first), ('second', second)]


@pytest.mark.slow
def test_two_phases_run_in_order_and_a_rerun_only_reports(tmp_path, module_cache):
  del module_cache
  logs = []
  out = phases.run(_tiny_phases(), tmp_path, log=logs.append, progress_bars=False)
  assert list(out) == ['first', 'second']
  lineage = json.loads((tmp_path / 'second' / 'run.json').read_text())['init_from']
  assert lineage['workdir'] == str(tmp_path / 'first') and lineage['checkpoint'] == 'latest'
  assert any(l.startswith('=== phase second') and 'first:latest' in l for l in logs), logs
  logs.clear()
  phases.run(_tiny_phases(), tmp_path, log=logs.append, progress_bars=False)
  assert sum('Training already finished' in l for l in logs) == 2, logs


def test_unknown_phase_and_missing_get_phases_are_errors(tmp_path):
  bad = _tiny_phases()
  bad[1][1].model.init_from = '{nope}:best'
  with pytest.raises(ValueError, match=r"phase second: model.init_from='\{nope\}:best' names "
                                       r"'nope', which is not an earlier phase \(first"):
    phases.run(bad, tmp_path, log=lambda _: None)
  with pytest.raises(ValueError, match='defines no get_phases'):
    phases.load_phases(str(ROOT / 'configs' / 'smoke.py'), None)
