"""The ablation configs and runner (two tiny variants on synthetic data, then a no-op rerun)."""

import csv
import os

import pytest

from configs import ablations
from configs import validate


def test_variants_cover_the_brief_and_validate():
  v = ablations.get_variants()
  for name in ('baseline', 'cut_mixed5', 'cut_mixed6', 'cut_mixed10', 'head_gap', 'dropout_0',
               'dropout_0.5', 'no_augment', 'preprocess_inception', 'weights_keras',
               'weights_random', 'images_50', 'images_100', 'unfreeze_mixed7'):
    assert name in v, name
    validate.validate(ablations.get_config(f'variant={name}'), device_count=1)
  c = ablations.get_config('variant=unfreeze_mixed7')
  assert c.optimizer.param_rules[0] == ('^backbone/mixed7/', 0.1)
  assert c.model.batchnorm_train_blocks == ('mixed7',)
  c = ablations.get_config('variant=baseline,cut=mixed6,preprocess=inception,augment=false')
  assert (c.model.cut, c.data.preprocess, c.data.augment.enabled) == ('mixed6', 'inception',
                                                                       False)
  with pytest.raises(ValueError, match="Unknown ablation variant 'nope'; valid: baseline"):
    ablations.get_config('variant=nope')
  with pytest.raises(ValueError, match="Unknown config arg 'cutt'"):
    ablations.get_config('cutt=mixed6')


def test_summary_rows_mean_and_sample_std_per_variant():
  from inception.tools import ablations as runner  # pylint: disable=g-import-not-at-top
  base = {c: None for c in runner.COLUMNS}
  rows = [dict(base, variant='a', seed=0, test_accuracy=0.9, wall_time_s=10.0),
          dict(base, variant='b', seed=0, test_accuracy=0.5, wall_time_s=3.0),
          dict(base, variant='a', seed=1, test_accuracy=0.8, wall_time_s=20.0)]
  summary = runner.summary_rows(rows)
  assert [(r['variant'], r['seeds']) for r in summary] == [('a', '0,1'), ('b', '0')]
  assert summary[0]['test_accuracy'] == '0.8500 +- 0.0707'  # Sample std of 0.9, 0.8.
  assert summary[0]['wall_time_s'] == '15 +- 7'
  assert summary[1]['test_accuracy'] == '0.5000' and summary[1]['train_loss'] == ''


@pytest.mark.slow
def test_runner_two_tiny_variants_and_noop_rerun(tmp_path, monkeypatch):
  from inception.tools import ablations as runner  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('INCEPTION_FLAX_CACHE', str(tmp_path / 'cache'))
  cfg = 'configs/ablations.py:base=smoke,cut=stem,epochs=1'
  rows = runner.run(cfg, tmp_path / 'abl', variants=['baseline', 'dropout_0.5'], seeds=[0],
                    progress_bars=False)
  assert [(r['variant'], r['seed']) for r in rows] == [('baseline', 0), ('dropout_0.5', 0)]
  for r in rows:
    assert 0.0 <= r['final_val_accuracy'] <= 1.0 and r['epochs'] == 1 and r['synthetic']
    assert r['test_accuracy'] is not None
  with open(tmp_path / 'abl' / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert [t['variant'] for t in table] == ['baseline', 'dropout_0.5']
  md = (tmp_path / 'abl' / 'results.md').read_text()
  assert 'SYNTHETIC' in md and '| dropout_0.5 | 0 |' in md
  assert 'Mean +- std over seeds' in md and '| dropout_0.5 | 0 | ' in md.split('Mean')[1]
  mtime = os.path.getmtime(tmp_path / 'abl' / 'baseline_seed0' / 'summary.json')
  logs = []
  again = runner.run(cfg, tmp_path / 'abl', variants=['baseline', 'dropout_0.5'], seeds=[0],
                     log=logs.append)
  assert again == rows
  assert sum('finished earlier' in l for l in logs) == 2
  assert os.path.getmtime(tmp_path / 'abl' / 'baseline_seed0' / 'summary.json') == mtime
