"""The ablation configs and runner (two tiny variants on synthetic data, then a no-op rerun)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import ablations
from configs import validate

ROOT = Path(__file__).resolve().parent.parent


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


def test_static_shares_are_disjoint_and_cover_the_runs():
  from inception.tools import ablations as runner  # pylint: disable=g-import-not-at-top
  runs = [(v, s) for v in ('a', 'b', 'c') for s in (0, 1)]
  shares = [runner.share(runs, i, 4) for i in range(4)]
  assert sorted(r for s in shares for r in s) == sorted(runs)
  assert shares[0] == [('a', 0), ('c', 0)] and shares[3] == [('b', 1)]
  assert runner.share(runs, None, None) == runs
  with pytest.raises(ValueError, match='go together'):
    runner.share(runs, 1, None)
  with pytest.raises(ValueError, match=r'--task_index=4 must be in \[0, --num_tasks=4\)'):
    runner.share(runs, 4, 4)


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['claim', 'static'])
def test_two_runners_at_once_run_every_run_exactly_once(tmp_path, mode):
  """Two `python -m inception.tools.ablations` processes on one workdir root, as two machines
  of a sweep on a shared filesystem."""
  env = dict(os.environ, INCEPTION_FLAX_CACHE=str(tmp_path / 'cache'), PYTHONPATH=str(ROOT),
             TF_CPP_MIN_LOG_LEVEL='2')
  # An empty cache: both runners prepare the same synthetic set and subset at once too.
  args = [sys.executable, '-m', 'inception.tools.ablations',
          '--config=configs/ablations.py:base=smoke,cut=stem,epochs=1',
          f'--workdir={tmp_path / "abl"}', '--variants=baseline,dropout_0.5', '--seeds=0,1',
          '--noprogress']
  procs = []
  for i in range(2):
    share = [f'--task_index={i}', '--num_tasks=2'] if mode == 'static' else []
    procs.append(subprocess.Popen(args + share, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  trained = [l.split(':')[0] for out in outs for l in out.splitlines()
             if l.startswith('[ablations]') and ': training in ' in l]
  runs = ['[ablations] baseline seed 0', '[ablations] baseline seed 1',
          '[ablations] dropout_0.5 seed 0', '[ablations] dropout_0.5 seed 1']
  assert sorted(trained) == runs, outs  # Each run trained once, by one of the two.
  with open(tmp_path / 'abl' / 'results.csv') as f:
    table = [(t['variant'], t['seed']) for t in csv.DictReader(f)]
  assert table == [('baseline', '0'), ('baseline', '1'), ('dropout_0.5', '0'),
                   ('dropout_0.5', '1')]
