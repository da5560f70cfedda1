"""A finished run's final report: the last evaluation of each split, plots, the confusion
matrices and reliability diagrams, the seed notebook's table and summary.json."""

from __future__ import annotations

from typing import Any, Callable

import jax
from etils import epath

from inception.train import checkpoints
from inception.train import metrics as metrics_lib
from inception.train import reporting


def finish(setup: Any, workdir: epath.Path, state: Any, log: Callable[[str], None], *,
           wall_time: float, resumed_from: int) -> dict:
  """Evaluates `state` on validation and test (when the data has one) and writes the report;
  returns the summary (summary.json). setup: the run's `trainer.Setup`."""
  config, info, class_names = setup.config, setup.info, setup.class_names
  val = setup.evaluate(state, 'validation')
  test = setup.evaluate(state, 'test') if info.num_examples.get('test', 0) else None
  reports = {split: metrics_lib.report(res['sums'], class_names)
             for split, res in (('validation', val), ('test', test)) if res is not None}
  history = reporting.epoch_history(reporting.read_metrics(workdir))
  best = checkpoints.best_of([history['validation'][e] for e in sorted(history['validation'])],
                             config.checkpoint.best_metric)
  last_train = history['train'][max(history['train'])] if history['train'] else {}
  summary = {
      'data': info.description, 'synthetic': bool(info.is_synthetic),
      'steps': int(jax.device_get(state.step)), 'total_steps': setup.total_steps,
      'epochs': config.train.epochs, 'resumed_from_step': resumed_from,
      'final_validation': {'loss': val['loss'], 'accuracy': val['accuracy'],
                           'count': val['count'], 'metrics': reports['validation']},
      'best_validation': None if best is None else
      {'loss': best['loss'], 'accuracy': best['accuracy'], 'epoch': best['epoch']},
      'final_train': {k: last_train.get(k) for k in ('loss', 'accuracy')},
      'test': None if test is None else {'loss': test['loss'], 'accuracy': test['accuracy'],
                                         'count': test['count'], 'metrics': reports['test']},
      'weights': setup.provenance, 'wall_time_s': wall_time,
      # train.class_weight resolved, {class: weight}; None: an unweighted loss.
      'class_weights': None if setup.class_weights is None else
      {n: float(w) for n, w in zip(class_names, setup.class_weights)},
  }
  if jax.process_index() == 0:
    for split, res in (('validation', val), ('test', test)):
      if res is not None:
        reporting.save_confusion(res['confusion'], class_names, workdir / f'confusion_{split}')
        reporting.save_reliability(reports[split], workdir / f'reliability_{split}')
    if history['train']:
      reporting.plot_history(history, workdir / 'history.png',
                             title=('SYNTHETIC DATA - ' if info.is_synthetic else '') +
                             f'{info.kind}: {", ".join(class_names)} '
                             f'({info.num_examples})')
    reporting.write_json(workdir / 'summary.json', summary)
  log(reporting.seed_table(history))
  if test is not None:
    log(f'test: accuracy {test["accuracy"]:.4f} loss {test["loss"]:.4f} (n={test["count"]})')
    log(metrics_lib.format_report(reports['test']))
  log(f'Outputs in {workdir}: metrics.jsonl, tensorboard/, history.png, '
      f'confusion_validation.{{png,json}}, reliability_validation.png, summary.json, run.json '
      f'and data_manifest.json (the run\'s record: eval and predict need only --workdir)')
  if info.is_synthetic:
    log(info.banner)
  return summary
