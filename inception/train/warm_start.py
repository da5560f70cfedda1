"""`model.init_from`: a new run starts from another run's parameters.

    model.init_from = '<workdir>[:best|:latest|:<step>]'     # default checkpoint: best

The subtrees the two models share ('backbone', 'head') are copied from the source run's
checkpoint, params and BatchNorm statistics both (the EMA's params when the source kept one),
leaf by leaf where a path exists in both; a leaf whose shape differs is an error naming it. What
the source lacks (a deeper cut, a new head) keeps this run's initialisation; the optimizer
state starts fresh. The lineage (source workdir, checkpoint, step, the sha256 of its run.json)
goes into this run's record, and eval, predict and export show it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import traverse_util

from inception import paths
from inception.train import restore
from inception.train import run_record

CHECKPOINTS = ('best', 'latest')


def parse(spec: str) -> tuple[str, str]:
  """(workdir, checkpoint) of 'W', 'W:best', 'W:latest' or 'W:<step>' (default 'best').

  A URI's 'gs://' colon is not a separator: only a last ':' followed by a checkpoint name or
  a number is.
  """
  head, sep, tail = spec.rpartition(':')
  if sep and (tail in CHECKPOINTS or tail.isdigit()):
    return head, tail
  return spec, 'best'


def validate_config(model: Any) -> None:
  """`model.init_from`: a string, '' (off) or a workdir with an optional checkpoint."""
  spec = model.get('init_from', '')
  if not isinstance(spec, str):
    raise ValueError(f'config.model.init_from={spec!r} must be a string: '
                     "'<workdir>[:best|:latest|:<step>]', or '' for none")
  if spec and not parse(spec)[0]:
    raise ValueError(f'config.model.init_from={spec!r} names no workdir; use '
                     "'<workdir>[:best|:latest|:<step>]'")


def initialize(spec: str, variables: dict, mesh: Any, log: Callable[[str], None] = print
               ) -> tuple[dict, dict]:
  """(variables with the source run's shared leaves copied in, the lineage for run.json).

  variables: this run's {'params', 'batch_stats'} (host or device arrays).
  Raises:
    FileNotFoundError: the source has no run record; NoCheckpointError: no such checkpoint.
    ValueError: a shared leaf's shape differs (the message names it), or nothing is shared.
  """
  workdir, checkpoint = parse(spec)
  workdir = paths.as_path(workdir)
  record = run_record.load(workdir)
  _, source, meta = restore.model_variables(workdir, record, record.config, checkpoint, mesh,
                                            log)
  source = jax.device_get(source)
  out, copied = {}, []
  for collection in ('params', 'batch_stats'):
    mine = traverse_util.flatten_dict(jax.device_get(variables[collection]), sep='/')
    theirs = traverse_util.flatten_dict(source.get(collection, {}), sep='/')
    for path, value in mine.items():
      if path in theirs:
        if theirs[path].shape != value.shape:
          raise ValueError(
              f'config.model.init_from={spec!r}: {collection} {path} has shape '
              f'{tuple(theirs[path].shape)} in {workdir} but {tuple(value.shape)} here; '
              'change the model to match, or start from scratch')
        mine[path] = theirs[path].astype(value.dtype)
        copied.append(f'{collection}/{path}')
    out[collection] = traverse_util.unflatten_dict(mine, sep='/')
  if not copied:
    raise ValueError(f'config.model.init_from={spec!r}: the run in {workdir} shares no layer '
                     'with this model')
  subtrees = sorted({p.split('/')[1] for p in copied})
  log(f'Warm start from {workdir} ({checkpoint}, step {meta["step"]}): {len(copied)} arrays '
      f'of {", ".join(subtrees)}; the optimizer starts fresh.')
  lineage = {'workdir': str(paths.absolute(workdir)), 'checkpoint': checkpoint,
             'step': int(meta['step']),
             'record_sha256': paths.file_digest(workdir / run_record.RECORD),
             'copied': subtrees}
  return out, lineage
