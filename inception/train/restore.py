"""A trained run's model variables from one of its checkpoints, rebuilt from its record alone:
what evaluation, prediction and a warm start (`warm_start`) read."""

from __future__ import annotations

from typing import Any, Callable

import ml_collections
from etils import epath

from inception import transfer
from inception.train import checkpoints
from inception.train import param_rules
from inception.train import run_record
from inception.train import sharding
from inception.train import steps as steps_lib


def checkpoint_dir(workdir: epath.Path, checkpoint: str) -> tuple[epath.Path, int | None]:
  """(the checkpoint folder, the step or None for the newest) of `checkpoint` = 'latest' |
  'best' | a step number; ValueError for anything else."""
  if checkpoint == 'best':
    return workdir / 'best', None
  if checkpoint == 'latest':
    return workdir / 'checkpoints', None
  try:
    return workdir / 'checkpoints', int(checkpoint)
  except ValueError:
    raise ValueError(f'--checkpoint={checkpoint!r} must be latest, best or a step number'
                     ) from None


def model_variables(workdir: epath.Path, record: run_record.RunRecord,
                    config: ml_collections.ConfigDict, checkpoint: str, mesh: Any,
                    log: Callable[[str], None] = print
                    ) -> tuple[transfer.TransferModel, dict, dict]:
  """(model, {'params', 'batch_stats'} replicated over `mesh`, the checkpoint's meta) of the
  run in `workdir` (its `record`, `config` merged from it). With train.ema_decay the params are
  the EMA's where it exists (what the run evaluated and `best` selected).

  Raises NoCheckpointError (with the directory and what exists) or ValueError (a bad
  `checkpoint`).
  """
  directory, step = checkpoint_dir(workdir, checkpoint)
  if not directory.is_dir():
    raise checkpoints.NoCheckpointError(
        f'No checkpoints at {directory}; the run in {workdir} saved none '
        f'{"(checkpoint.keep_best was off)" if checkpoint == "best" else "yet"}.')
  model = transfer.from_config(config, len(record.class_names), record.weights['variant'])
  abstract = transfer.variable_shapes(model, config.data.image_size)
  # Runs recorded before train.ema_decay existed had none.
  ema_decay = config.train.get('ema_decay', 0.0)
  mask = param_rules.trainable_mask(abstract['params'], config.optimizer.param_rules)
  abstract_ema = param_rules.split(abstract['params'], mask)[0] if ema_decay else None
  mngr = checkpoints.manager(directory, keep=1_000_000, async_save=False)
  try:
    variables, meta = checkpoints.restore(mngr, abstract_model=abstract,
                                          abstract_ema=abstract_ema, step=step,
                                          sharding=sharding.replicated(mesh), log=log)
  finally:
    mngr.close()
  if ema_decay:
    variables = {'params': steps_lib.with_ema(variables['params'], variables['ema'], mask),
                 'batch_stats': variables['batch_stats']}
  log(f'Restored {directory}/{meta["step"]} (epoch {meta.get("epoch")})'
      + (f'; its EMA parameters (train.ema_decay={ema_decay}).' if ema_decay else '.'))
  return model, variables, meta
