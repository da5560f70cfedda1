"""model.init_from: a run starts from another run's parameters, with its lineage recorded."""

import json

import jax
import numpy as np
import pytest

from configs import smoke
from configs import validate
from inception.tools import evaluate
from inception.train import trainer
from inception.train import warm_start


def _config(seed=0, epochs=1, init_from='', dense_units=32):
  c = smoke.get_config(f'epochs={epochs},cut=stem')
  c.seed = seed
  c.model.dense_units = dense_units
  c.model.init_from = init_from
  return c


@pytest.fixture(scope='module')
def source(tmp_path_factory, module_cache):
  del module_cache
  wd = tmp_path_factory.mktemp('source')
  trainer.train(_config(), wd, progress_bars=False, log=lambda _: None)
  return wd


def test_parse_reads_the_checkpoint_after_the_last_colon():
  assert warm_start.parse('runs/a') == ('runs/a', 'best')
  assert warm_start.parse('runs/a:latest') == ('runs/a', 'latest')
  assert warm_start.parse('runs/a:120') == ('runs/a', '120')
  assert warm_start.parse('gs://bucket/run') == ('gs://bucket/run', 'best')
  assert warm_start.parse('gs://bucket/run:best') == ('gs://bucket/run', 'best')


def test_validate_names_the_key():
  c = _config(init_from='runs/a:best')
  validate.validate(c, device_count=1)
  c.model.init_from = ':best'
  with pytest.raises(ValueError, match=r"config\.model\.init_from=':best' names no workdir"):
    validate.validate(c, device_count=1)


def test_the_new_run_starts_from_the_source_parameters(source):
  logs = []
  s = trainer.build(_config(seed=1, init_from=f'{source}:latest'), log=logs.append)
  want = evaluate.restore(source, 'latest', log=lambda _: None).variables
  got = jax.device_get({'params': s.state.params, 'batch_stats': s.state.batch_stats})
  jax.tree.map(np.testing.assert_array_equal, got, jax.device_get(want))
  assert int(jax.device_get(s.state.step)) == 0  # A new run: the optimizer starts fresh.
  lineage = s.init_from
  assert lineage['checkpoint'] == 'latest' and lineage['step'] > 0
  assert lineage['copied'] == ['backbone', 'head']
  assert len(lineage['record_sha256']) == 64
  assert any(l.startswith('Warm start from') for l in logs), logs
  # Without init_from the same seed starts elsewhere.
  fresh = trainer.build(_config(seed=1), log=lambda _: None)
  assert not np.array_equal(jax.device_get(fresh.state.params['head']['logits']['kernel']),
                            got['params']['head']['logits']['kernel'])


def test_a_shape_mismatch_names_the_layer(source):
  with pytest.raises(ValueError, match=r"init_from=.*params head/dense/bias has shape "
                                       r"\(32,\) in .* but \(16,\) here"):
    trainer.build(_config(init_from=str(source), dense_units=16), log=lambda _: None)


def test_a_source_without_the_checkpoint_is_an_error(tmp_path, source):
  with pytest.raises(FileNotFoundError, match='not the workdir of a trained run'):
    trainer.build(_config(init_from=str(tmp_path)), log=lambda _: None)
  with pytest.raises(FileNotFoundError, match='No checkpoint for step 99999'):
    trainer.build(_config(init_from=f'{source}:99999'), log=lambda _: None)


@pytest.mark.slow
def test_lineage_is_recorded_kept_on_resume_and_shown_by_eval(source, tmp_path):
  spec = f'{source}:best'
  trainer.train(_config(seed=1, init_from=spec), tmp_path, progress_bars=False,
                log=lambda _: None)
  first = json.loads((tmp_path / 'run.json').read_text())['init_from']
  assert first['workdir'] == str(source) and first['checkpoint'] == 'best'
  logs = []
  trainer.train(_config(seed=1, epochs=2, init_from=spec), tmp_path, progress_bars=False,
                log=logs.append)
  assert not any(l.startswith('Warm start from') for l in logs)  # Resumed from its checkpoint.
  assert json.loads((tmp_path / 'run.json').read_text())['init_from'] == first
  logs = []
  out = evaluate.evaluate(tmp_path, checkpoint='latest', split='validation', log=logs.append)
  assert out['init_from'] == first
  assert any('warm-started from' in l for l in logs), logs
