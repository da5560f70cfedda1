"""The parameter EMA (train.ema_decay) and test-time augmentation (eval.tta): the recursion
step by step, what evaluation uses, the checkpoint item, and the flip average in eval/predict."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import smoke
from inception import transfer
from inception.tools import evaluate
from inception.tools import predict
from inception.train import optim
from inception.train import param_rules
from inception.train import run_record
from inception.train import steps
from inception.train import trainer

SIZE = 75


def _model_and_state(ema: bool):
  c = default.get_config()
  c.model.cut, c.model.weights, c.model.head, c.model.dense_units = 'stem', 'random', 'gap', 8
  model = transfer.from_config(c, 2)
  variables = transfer.init_variables(model, SIZE, 0)
  tx = optim.make(c.optimizer, variables['params'])
  mask = param_rules.trainable_mask(variables['params'], c.optimizer.param_rules)
  return model, tx, mask, steps.create_state(variables, tx, mask=mask, ema=ema)


def _batch(seed: int, nonfinite: bool = False) -> dict:
  rng = np.random.default_rng(seed)
  image = rng.uniform(0, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
  if nonfinite:
    image[0, 0, 0, 0] = np.nan
  return {'image': image, 'label': (np.arange(4) % 2).astype(np.int32)}


def test_ema_follows_its_recursion_skips_a_nonfinite_step_and_leaves_out_frozen_params():
  model, tx, mask, state = _model_and_state(ema=True)
  assert set(state.ema) == {'head'}  # The trainable subtree only.
  d = 0.9
  step = steps.make_train_step(model, tx, mask, ema_decay=d, donate=False)
  key = jax.random.key(0)
  want = jax.tree.map(np.asarray, state.ema)
  for i, bad in enumerate((False, False, True, False)):
    state, metrics = step(state, _batch(i, nonfinite=bad), key)
    assert int(metrics['nonfinite']) == int(bad)
    if not bad:  # A skipped update leaves the average alone too.
      want = jax.tree.map(lambda e, p: d * e + (1 - d) * np.asarray(p), want,
                          param_rules.split(state.params, mask)[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 state.ema, want)
  used = steps.eval_params(state, mask)
  jax.tree.map(np.testing.assert_array_equal, used['head'], state.ema['head'])
  jax.tree.map(np.testing.assert_array_equal, used['backbone'], state.params['backbone'])
  _, _, _, plain = _model_and_state(ema=False)
  assert plain.ema is None and steps.eval_params(plain, mask) is plain.params


def test_flip_tta_averages_the_probabilities_of_the_image_and_its_mirror():
  model, _, mask, state = _model_and_state(ema=False)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  batch = {**_batch(5), 'mask': np.array([True, True, True, False])}
  p = lambda x: np.asarray(steps.probabilities(model.apply(variables, x, train=False)))
  avg = (p(batch['image']) + p(batch['image'][:, :, ::-1])) / 2
  got = steps.make_predict_step(model, tta='flip')(variables, batch['image'])
  np.testing.assert_allclose(got, avg, rtol=1e-5)
  sums = steps.make_eval_step(model, 2, tta='flip')(variables, batch)
  labels, real = batch['label'][:3], slice(0, 3)
  np.testing.assert_allclose(float(sums['loss']),
                             -np.log(avg[real][np.arange(3), labels]).sum(), rtol=1e-5)
  assert float(sums['correct']) == (avg[real].argmax(-1) == labels).sum()
  assert float(sums['count']) == 3
  # 'none' is the plain step; an unknown mode names the key.
  plain = steps.make_eval_step(model, 2)(variables, batch)
  np.testing.assert_allclose(float(plain['loss']),
                             -np.log(p(batch['image'])[real][np.arange(3), labels]).sum(),
                             rtol=1e-5)
  with pytest.raises(ValueError, match=r"config.eval.tta='rotate' is not valid"):
    steps.make_eval_step(model, 2, tta='rotate')


@pytest.fixture(scope='module')
def ema_run(tmp_path_factory):
  old = os.environ.get('INCEPTION_FLAX_CACHE')
  os.environ['INCEPTION_FLAX_CACHE'] = str(tmp_path_factory.mktemp('cache'))
  c = smoke.get_config('epochs=2,cut=stem')
  c.train.ema_decay = 0.5
  wd = tmp_path_factory.mktemp('ema') / 'run'
  summary = trainer.train(c, wd, progress_bars=False, log=lambda _: None)
  yield wd, summary
  if old is None:
    del os.environ['INCEPTION_FLAX_CACHE']
  else:
    os.environ['INCEPTION_FLAX_CACHE'] = old


@pytest.mark.slow
def test_an_ema_run_saves_and_evaluates_its_average(ema_run):
  wd, summary = ema_run
  assert (wd / 'checkpoints' / '6' / 'ema').is_dir() and (wd / 'best').is_dir()
  logs = []
  r = evaluate.restore(wd, 'latest', log=logs.append)
  assert any('its EMA parameters (train.ema_decay=0.5)' in l for l in logs)
  # The restored head is the EMA, not the last params; both are in the checkpoint.
  from inception.train import checkpoints  # pylint: disable=g-import-not-at-top
  mngr = checkpoints.manager(wd / 'checkpoints', keep=10, async_save=False)
  abstract = transfer.variable_shapes(r.model, r.config.data.image_size)
  raw, _ = checkpoints.restore(mngr, abstract_model=abstract, log=lambda _: None)
  mngr.close()
  head = lambda v: np.asarray(jax.device_get(v['params']['head']['logits']['kernel']))
  assert not np.array_equal(head(r.variables), head(raw))
  # Evaluation from the workdir gives what training's final validation gave (the EMA).
  val = evaluate.evaluate(wd, split='validation', log=lambda _: None)
  assert val['loss'] == pytest.approx(summary['final_validation']['loss'], rel=1e-5)
  assert val['accuracy'] == summary['final_validation']['accuracy']


@pytest.mark.slow
def test_tta_at_evaluation_is_recorded_and_gets_its_own_file(ema_run, tmp_path):
  wd, _ = ema_run
  record = run_record.load(wd)
  given = record.config.copy_and_resolve_references()
  given.eval.tta = 'flip'
  logs = []
  out = evaluate.evaluate(wd, split='test', config=given, log=logs.append)
  assert out['tta'] == 'flip' and logs[-1].endswith(f'(n={out["count"]}, tta=flip)')
  plain = evaluate.evaluate(wd, split='test', log=lambda _: None)
  assert plain['tta'] == 'none'
  # train.py's --tta: the same evaluation as the --config route.
  again = evaluate.evaluate(wd, split='test', tta='flip', log=lambda _: None)
  assert (again['tta'], again['loss'], again['accuracy']) == ('flip', out['loss'],
                                                              out['accuracy'])
  files = sorted(p.name for p in (wd / 'eval').glob('test_latest_step6*.json')
                 if 'confusion' not in p.name)
  assert files == ['test_latest_step6.json', 'test_latest_step6_tta-flip.json']
  assert json.loads((wd / 'eval' / files[1]).read_text())['tta'] == 'flip'
  assert (wd / 'eval' / 'test_latest_step6_tta-flip_confusion.json').is_file()
  csv = tmp_path / 'p.csv'
  test_dir = str(record.data['root']) + '/test'
  rows = predict.predict(wd, [test_dir], output=str(csv), config=given, log=lambda _: None)
  assert json.loads(open(f'{csv}.json').read())['tta'] == 'flip' and len(rows) == 8
  assert sum(r['class'] == os.path.basename(os.path.dirname(r['path'])) for r in rows) == \
      round(out['accuracy'] * 8)
