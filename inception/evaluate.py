"""Evaluate a checkpoint on the validation or test split or on any class-folder tree.

Restores only the model ({'params', 'batch_stats'}; no optimizer state) from
`<workdir>/checkpoints` ('latest' or a step) or `<workdir>/best` ('best'), on however many
devices this process sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from inception import checkpoints
from inception import reporting
from inception import sharding
from inception import steps as steps_lib
from inception import trainer


def restore_model(config: ml_collections.ConfigDict, workdir: str | Path, checkpoint: str,
                  setup: trainer.Setup, log: Callable[[str], None] = print
                  ) -> tuple[dict, dict]:
  """({'params', 'batch_stats'}, meta) from `checkpoint` = 'latest' | 'best' | a step number.

  Raises NoCheckpointError with the directory and what exists.
  """
  workdir = Path(workdir)
  if checkpoint == 'best':
    directory, step = workdir / 'best', None
  elif checkpoint == 'latest':
    directory, step = workdir / 'checkpoints', None
  else:
    try:
      step = int(checkpoint)
    except ValueError:
      raise ValueError(f'--checkpoint={checkpoint!r} must be latest, best or a step number'
                       ) from None
    directory = workdir / 'checkpoints'
  if not directory.is_dir():
    raise checkpoints.NoCheckpointError(
        f'No checkpoints at {directory}; train first (python train.py --config ... --workdir '
        f'{workdir}) or pass the --workdir of a trained run.')
  mngr = checkpoints.manager(directory, keep=1_000_000, async_save=False)
  try:
    abstract = {'params': setup.state.params, 'batch_stats': setup.state.batch_stats}
    model_vars, meta = checkpoints.restore(mngr, abstract_model=abstract, step=step,
                                           sharding=sharding.replicated(setup.mesh), log=log)
  finally:
    mngr.close()
  log(f'Restored {directory}/{meta["step"]} (epoch {meta.get("epoch")}).')
  return model_vars, meta


def _folder_class_batches(eval_dir: str, class_names, config_data, batch_size: int, log):
  """Batches of `<eval_dir>/<class>/*` labelled by class index (mask marks real examples)."""
  import data  # pylint: disable=g-import-not-at-top
  root = Path(eval_dir)
  missing = [c for c in class_names if not (root / c).is_dir()]
  if missing:
    raise FileNotFoundError(f'--eval_dir {root} must hold one folder per class '
                            f'{list(class_names)}; missing: {missing}')
  for label, name in enumerate(class_names):
    for batch in data.folder_batches(root / name, config_data, batch_size=batch_size, log=log):
      yield {'image': batch['image'], 'mask': batch['mask'],
             'label': np.full(batch['mask'].shape, label, np.int32)}


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
             checkpoint: str = 'latest', split: str = 'validation', eval_dir: str | None = None,
             log: Callable[[str], None] = print) -> dict:
  """Loss, accuracy, count and confusion matrix of a checkpoint on `split` or `eval_dir`.

  eval_dir: a class-folder tree `<eval_dir>/<class name>/*` with the run's class names.
  Writes eval_<split|folder>_<checkpoint>.json and its confusion matrix (PNG + JSON) into
  the workdir.
  """
  workdir = Path(workdir)
  # Weights come from the checkpoint: the pretrained file is not loaded.
  setup = trainer.build(config, log=log, with_weights=False, workdir=workdir)
  if not eval_dir and not setup.info.num_examples.get(split):
    raise ValueError(f'--split={split!r} has no examples in this data set '
                     f'({setup.info.num_examples}); use validation or test')
  model_vars, meta = restore_model(config, workdir, checkpoint, setup, log)
  repl, dsh = sharding.replicated(setup.mesh), sharding.data_sharded(setup.mesh)
  eval_step = steps_lib.make_eval_step(setup.model, len(setup.class_names), replicated=repl,
                                       batch_sharding=dsh)
  import data  # pylint: disable=g-import-not-at-top
  if eval_dir:
    batches = _folder_class_batches(eval_dir, setup.class_names, config.data,
                                    config.eval.batch_size, log)
  else:
    batches = data.eval_batches(setup.info, config.data, split=split,
                                batch_size=config.eval.batch_size,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
  res = trainer.evaluate_batches(eval_step, model_vars, batches, setup.mesh)
  name = 'folder' if eval_dir else split
  out = {'split': name, 'eval_dir': eval_dir, 'checkpoint': checkpoint, 'step': meta['step'],
         'loss': res['loss'], 'accuracy': res['accuracy'], 'count': res['count'],
         'class_names': list(setup.class_names), 'confusion': res['confusion'].tolist()}
  if trainer.is_main():
    stem = workdir / f'eval_{name}_{checkpoint}'
    reporting.save_confusion(res['confusion'], setup.class_names, f'{stem}_confusion')
    reporting.write_json(f'{stem}.json', out)
  log(f'{name} @ step {meta["step"]} ({checkpoint}): accuracy {res["accuracy"]:.4f} '
      f'loss {res["loss"]:.4f} (n={res["count"]})')
  return out
