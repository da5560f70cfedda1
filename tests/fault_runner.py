"""`train.py` with a SIGKILL injected at an exact point, for the fault tests.

    INCEPTION_FLAX_FAULT=train_step:5 python tests/fault_runner.py --config ... --workdir ...

The arguments are train.py's. INCEPTION_FLAX_FAULT=<point>:<n> kills this process with SIGKILL
(no cleanup, no atexit, no flush: as the OOM killer or a pre-empted VM would) at the n-th
(1-based, counted in this process) occurrence of <point>:
  train_step   entering a jitted train step call (the previous steps may still be running)
  eval_step    entering a jitted eval step call (validation/test evaluation)
  ckpt_commit  an orbax save has written every file of a checkpoint into its temporary folder
               but not renamed it to <step>/ (the commit point)
  ckpt_write   an orbax save is about to write the model item (meta may be written already)
Before dying it appends '<point>:<n>' to $INCEPTION_FLAX_FAULT_LOG when set, so the test knows
the fault fired (and was not, say, a crash).

Preemption instead of a kill: SIGTERM (what Slurm, GKE and TPU VMs send first) at
  sigterm_at_step   entering the n-th jitted train step call
  sigterm_in_save   an orbax save about to write its n-th item (ckpt_write's point)
logged as '<point>:<n> <unix time>'. Several specs may be given, comma-separated.

INCEPTION_FLAX_RECORD_BATCHES=<dir> (with or without a fault) appends one line per training
batch this process reads to <dir>/batches.<process index>.jsonl: its labels and a sha256 per
example image, so tests can check which process read which examples.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POINTS = ('train_step', 'eval_step', 'ckpt_commit', 'ckpt_write', 'sigterm_at_step',
          'sigterm_in_save')


def _fire(point: str, n: int) -> None:
  """Logs the fault, then SIGKILL (SIGTERM for the sigterm_* points, with the time logged)."""
  term = point.startswith('sigterm')
  log = os.environ.get('INCEPTION_FLAX_FAULT_LOG')
  if log:
    with open(log, 'a') as f:
      f.write(f'{point}:{n}' + (f' {time.time():.3f}' if term else '') + '\n')
  os.kill(os.getpid(), signal.SIGTERM if term else signal.SIGKILL)


def _counting(point: str, n: int):
  """A hook that fires on its n-th call."""
  calls = [0]

  def hook():
    calls[0] += 1
    if calls[0] == n:
      _fire(point, n)
  return hook


def install(specs: str) -> None:
  """Patches the code so that each '<point>:<n>' of `specs` fires (see module doc)."""
  for spec in specs.split(','):
    _install_one(spec)


def _install_one(spec: str) -> None:
  point, _, n = spec.partition(':')
  if point not in POINTS or not n.isdigit() or int(n) < 1:
    raise SystemExit(f'INCEPTION_FLAX_FAULT={spec!r}: expected <point>:<n>, n >= 1, point one '
                     f'of {", ".join(POINTS)}')
  hook = _counting(point, int(n))
  if point in ('train_step', 'eval_step', 'sigterm_at_step'):
    from inception.train import steps  # pylint: disable=g-import-not-at-top
    name = 'make_train_step' if point == 'sigterm_at_step' else f'make_{point}'
    make = getattr(steps, name)

    def patched_make(*args, **kwargs):
      fn = make(*args, **kwargs)

      def wrapped(*a, **k):
        hook()
        return fn(*a, **k)
      return wrapped
    setattr(steps, name, patched_make)
  elif point == 'ckpt_commit':
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
    cls = atomicity.AtomicRenameTemporaryPath
    finalize = cls.finalize

    async def patched_finalize(self, *a, **k):
      hook()
      return await finalize(self, *a, **k)
    cls.finalize = patched_finalize
  else:  # ckpt_write, sigterm_in_save
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    handler = ocp.StandardCheckpointHandler
    async_save = handler.async_save

    async def patched_save(self, *a, **k):
      hook()
      return await async_save(self, *a, **k)
    handler.async_save = patched_save


def record_batches(directory: str) -> None:
  """Patches data.pipeline.train_batches to log each batch it yields (see module doc)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from data import pipeline  # pylint: disable=g-import-not-at-top
  train_batches = pipeline.train_batches

  def patched(*args, **kwargs):
    path = Path(directory) / f'batches.{jax.process_index()}.jsonl'
    for batch in train_batches(*args, **kwargs):
      with path.open('a') as f:
        f.write(json.dumps({'label': batch['label'].tolist(), 'image': [
            hashlib.sha256(x.tobytes()).hexdigest()[:16] for x in batch['image']]}) + '\n')
      yield batch
  pipeline.train_batches = patched


def main() -> None:
  spec = os.environ.get('INCEPTION_FLAX_FAULT', '')
  sys.path.insert(0, str(ROOT))
  os.chdir(ROOT)
  if spec:
    install(spec)
  if os.environ.get('INCEPTION_FLAX_RECORD_BATCHES'):
    record_batches(os.environ['INCEPTION_FLAX_RECORD_BATCHES'])
  from absl import app  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  app.run(lambda argv: sys.exit(train.main(argv)))


if __name__ == '__main__':
  main()
