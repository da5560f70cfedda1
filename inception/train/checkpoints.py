"""Orbax checkpoints of a run, the best-model checkpoint, and the workdir lock.

Layout of a workdir:
    checkpoints/<step>/{model,opt,meta[,ema]}  last `keep` checkpoints (every N steps / epoch)
    best/<step>/{model,opt,meta[,ema]}         the single best one by `checkpoint.best_metric`
    .lock                                 held by the running process (`WorkdirLock`)

Items: 'model' = {'params', 'batch_stats'} (ALL params, frozen ones too, so a checkpoint is
self-contained: evaluation and prediction need no weights file, and a changed weights cache
can't silently change a resumed run; the frozen part of mixed7 is ~36 MB), 'opt' =
{'opt_state'} (restored only to resume training), 'meta' = JSON (step, epoch, metrics, weights
provenance), 'ema' = {'params': the trainable params' moving average} when train.ema_decay
is on (evaluation then uses it). The data order and dropout keys are functions of the step, so
the step is all the input-pipeline position there is.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import contextlib
import time
import uuid
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from inception import checks
from inception import paths
from inception.train import sharding as sharding_lib
from inception.train import steps as steps_lib


BEST_METRICS = ('accuracy_then_loss', 'loss')


def validate_config(ck: Any) -> None:
  """Checks `config.checkpoint`, naming the first bad key (ValueError)."""
  checks.number('checkpoint.every_steps', ck.every_steps, lo=0, integer=True)
  checks.boolean('checkpoint.every_epoch', ck.every_epoch)
  checks.number('checkpoint.keep', ck.keep, lo=1, integer=True)
  checks.boolean('checkpoint.keep_best', ck.keep_best)
  checks.choice('checkpoint.best_metric', ck.best_metric, BEST_METRICS)
  checks.boolean('checkpoint.async_save', ck.async_save)


class NoCheckpointError(FileNotFoundError):
  """No usable checkpoint in a directory."""


def is_better(candidate: dict, best: dict | None, metric: str) -> bool:
  """Whether validation metrics `candidate` ({'accuracy', 'loss'}) beat `best` (None: none yet).

  metric 'accuracy_then_loss': higher accuracy, equal accuracy broken by lower loss (on a small
  validation set accuracy moves in steps of 1/n, so ties are common); 'loss': lower loss.
  A complete tie keeps `best` (the earlier epoch).
  """
  if metric not in BEST_METRICS:
    raise ValueError(f'checkpoint.best_metric={metric!r} is not valid; valid: '
                     f'{", ".join(BEST_METRICS)}')
  if best is None:
    return True
  if metric == 'loss':
    return candidate['loss'] < best['loss']
  return (candidate['accuracy'], -candidate['loss']) > (best['accuracy'], -best['loss'])


def best_of(records: list[dict], metric: str) -> dict | None:
  """The record (in order, e.g. per epoch) that `is_better` keeps last; None when empty."""
  best = None
  for r in records:
    if is_better(r, best, metric):
      best = r
  return best


class WorkdirLock:
  """Exclusive lock on `<workdir>/.lock`, so two runs never write one workdir.

  Local workdir: `fcntl.flock` on the file; the kernel releases it when the process exits, even
  when killed. A URI workdir (gs://...; object stores have no locks) uses a lease: the file
  holds its owner and is renewed every `renew_s` seconds by a daemon thread; a lease not renewed
  for `stale_s` seconds (its run was killed without releasing it, e.g. a deleted VM) is taken
  over with a warning naming it, so an automatic restart resumes. Two runs started within the
  same moment may both take a free lease (an object store has no create-if-absent here): the
  lease guards against a second run on a workdir in use, not a simultaneous start.
  """

  def __init__(self, workdir: str | os.PathLike, *, renew_s: float = 60.0,
               stale_s: float = 300.0, log: Callable[[str], None] = print):
    self.path = paths.as_path(workdir) / '.lock'
    self.renew_s, self.stale_s, self._log = renew_s, stale_s, log
    self._fd: int | None = None
    self._lease: str | None = None
    self._stop = threading.Event()
    self._renewer: threading.Thread | None = None

  def acquire(self) -> 'WorkdirLock':
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if paths.is_local(self.path):
      self._acquire_flock()
    else:
      self._acquire_lease()
    return self

  def _in_use(self, holder: str) -> RuntimeError:
    return RuntimeError(f'Workdir {self.path.parent} is in use by another run ({holder}; '
                        f'lock {self.path}). Wait for it to finish or use another --workdir.')

  def _acquire_flock(self) -> None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or 'unknown'
      os.close(fd)
      raise self._in_use(f'pid {holder}') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    self._fd = fd

  def _read_lease(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except ValueError:  # Torn or foreign content: nobody can renew it, so treat it as stale.
      return {'owner': 'unreadable lease', 'renewed': 0.0}

  def _write_lease(self) -> None:
    paths.write_text(self.path, json.dumps({'owner': self._lease, 'renewed': time.time()}))

  def _acquire_lease(self) -> None:
    held = self._read_lease()
    if held is not None:
      age = time.time() - float(held.get('renewed', 0.0))
      if age < self.stale_s:
        raise self._in_use(f'lease of {held.get("owner")}, renewed {age:.0f} s ago')
      self._log(f'WARNING: taking over the lock {self.path}: its holder ({held.get("owner")}) '
                f'last renewed it {age:.0f} s ago (> {self.stale_s:.0f} s), so its run is gone.')
    self._lease = f'{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}'
    self._write_lease()
    if (self._read_lease() or {}).get('owner') != self._lease:
      raise self._in_use('a run that took the lease at the same moment')
    self._stop.clear()
    self._renewer = threading.Thread(target=self._renew, name='workdir-lease', daemon=True)
    self._renewer.start()

  def _renew(self) -> None:
    while not self._stop.wait(self.renew_s):
      try:
        holder = (self._read_lease() or {}).get('owner')
        if holder != self._lease:
          # Another run judged this one dead (no renewal for stale_s) and took the workdir.
          self._log(f'ERROR: the lock {self.path} was taken over by {holder}; this run no '
                    'longer holds its workdir and stops renewing. Stop one of the two runs.')
          return
        self._write_lease()
      except Exception as e:  # pylint: disable=broad-except  # Retried at the next period.
        self._log(f'WARNING: could not renew the lock {self.path}: {e}')

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    if self._lease is not None:
      self._stop.set()
      self._renewer.join()
      if (self._read_lease() or {}).get('owner') == self._lease:
        self.path.unlink()
      self._lease = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def manager(directory: str | os.PathLike, keep: int, *, async_save: bool = True
            ) -> ocp.CheckpointManager:
  """CheckpointManager over `directory` keeping the last `keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(paths.absolute(directory), options=options,
                               item_names=('model', 'opt', 'meta', 'ema'))


def save(mngr: ocp.CheckpointManager, state: steps_lib.TrainState, meta: dict) -> None:
  """Saves `state` at its step (asynchronously; `mngr.wait_until_finished()` to block)."""
  step = int(jax.device_get(state.step))
  meta = {**meta, 'step': step}
  if step in mngr.all_steps():
    # Only after falling back past a damaged checkpoint: replace the damaged one.
    mngr.delete(step)
  items = dict(
      model=ocp.args.StandardSave({'params': state.params, 'batch_stats': state.batch_stats}),
      opt=ocp.args.StandardSave({'opt_state': state.opt_state}),
      meta=ocp.args.JsonSave(meta))
  if state.ema is not None:
    items['ema'] = ocp.args.StandardSave({'params': state.ema})
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


def _abstract(tree: Any, sharding: Any) -> Any:
  def one(x):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
  return jax.tree.map(one, tree)


def restore(mngr: ocp.CheckpointManager, abstract_state: steps_lib.TrainState | None = None, *,
            abstract_model: dict | None = None, abstract_ema: Any = None,
            step: int | None = None, sharding: Any = None,
            log: Callable[[str], None] = print) -> tuple[Any, dict]:
  """Restores the newest readable checkpoint (or exactly `step`).

  Pass `abstract_state` (a TrainState of arrays or ShapeDtypeStructs) to get a full TrainState
  back for resuming, or `abstract_model` ({'params', 'batch_stats'}) to restore only the model
  (no optimizer state; for evaluation), with `abstract_ema` (the trainable params' tree) also
  the EMA, returned as the model's 'ema'. A state with `ema` restores it too. Arrays are placed
  with `sharding` (e.g. replicated).
  A damaged newest checkpoint is reported and the previous one tried.

  Returns:
    (TrainState or {'params', 'batch_stats'}, meta dict).
  Raises:
    NoCheckpointError: nothing usable (or `step` missing/damaged).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise NoCheckpointError(f'No checkpoint for step {step} in {mngr.directory}; available: '
                              f'{sorted(steps)}')
    steps = [step]
  if not steps:
    raise NoCheckpointError(f'No checkpoint in {mngr.directory}')
  errors = []
  for s in steps:
    try:
      if abstract_state is not None:
        model_t = {'params': abstract_state.params, 'batch_stats': abstract_state.batch_stats}
        items = dict(
            model=ocp.args.StandardRestore(_abstract(model_t, sharding)),
            opt=ocp.args.StandardRestore(
                _abstract({'opt_state': abstract_state.opt_state}, sharding)),
            meta=ocp.args.JsonRestore())
        abstract_ema = abstract_state.ema
      else:
        items = dict(model=ocp.args.StandardRestore(_abstract(abstract_model, sharding)),
                     meta=ocp.args.JsonRestore())
      if abstract_ema is not None:
        items['ema'] = ocp.args.StandardRestore(_abstract({'params': abstract_ema}, sharding))
      out = mngr.restore(s, args=ocp.args.Composite(**items))
      meta = dict(out['meta'])
      if meta.get('step') != s:
        raise ValueError(f'meta step {meta.get("step")} != directory step {s}')
      ema = out['ema']['params'] if abstract_ema is not None else None
      if abstract_state is None:
        return {**out['model'], **({'ema': ema} if ema is not None else {})}, meta
      return steps_lib.TrainState(
          step=np.int32(s) if sharding is None else
          jax.make_array_from_process_local_data(sharding, np.int32(s)),
          params=out['model']['params'], batch_stats=out['model']['batch_stats'],
          opt_state=out['opt']['opt_state'], ema=ema), meta
    except Exception as e:  # pylint: disable=broad-except
      # Any failure to read a step (truncated files, missing items) counts as damage.
      msg = f'{type(e).__name__}: {str(e)[:300]}'
      log(f'WARNING: checkpoint {mngr.directory}/{s} is damaged or unreadable ({msg}); '
          f'trying an older one.')
      errors.append((s, msg))
  raise NoCheckpointError(f'No usable checkpoint in {mngr.directory}; tried steps '
                          f'{[s for s, _ in errors]}: {errors[0][1]}')


@contextlib.contextmanager
def job_lock(workdir: str | os.PathLike):
  """The workdir lock, held by process 0 for the whole job; every process raises RuntimeError
  when the workdir is in use."""
  lock = WorkdirLock(workdir)
  sharding_lib.on_main_agreed(lock.acquire, RuntimeError, RuntimeError(
      f'Workdir {workdir} is in use by another run (process 0 could not lock {lock.path}).'))
  try:
    yield
  finally:
    lock.release()


class RunCheckpoints:
  """A run's two checkpoint managers (the latest ones, the best one); closed on every exit path.

  ck: `config.checkpoint`.
  """

  def __init__(self, workdir: str | os.PathLike, ck: Any):
    workdir = paths.as_path(workdir)
    self.latest = manager(workdir / 'checkpoints', ck.keep, async_save=ck.async_save)
    self.best = manager(workdir / 'best', 1, async_save=ck.async_save) if ck.keep_best else None
    self.last_saved: int | None = None  # Step of the newest save to `latest`.

  def __enter__(self) -> 'RunCheckpoints':
    return self

  def __exit__(self, *exc) -> None:
    for m in (self.latest, self.best):
      if m is not None:
        m.close()  # Waits for pending async saves first.

  def restore_or_start(self, state: steps_lib.TrainState, mesh: Any,
                       log: Callable[[str], None]) -> tuple[steps_lib.TrainState, dict]:
    """(state, meta) of the newest readable checkpoint, replicated over `mesh`, or
    (`state`, {}) from scratch."""
    try:
      state, meta = restore(self.latest, state, sharding=sharding_lib.replicated(mesh), log=log)
    except NoCheckpointError as e:
      if self.latest.all_steps():
        log(f'WARNING: {e}. STARTING TRAINING FROM SCRATCH.')
      else:
        log(f'No checkpoint in {self.latest.directory}: starting from scratch.')
      return state, {}
    self.last_saved = int(meta['step'])
    log(f'Resumed from {self.latest.directory}/{meta["step"]} (epoch {meta.get("epoch")}).')
    return state, meta

  def save(self, state: steps_lib.TrainState, meta: dict, *, best: bool = False) -> None:
    """Saves to `best` (one kept) or `latest` (`checkpoint.keep` kept), asynchronously."""
    if best:
      save(self.best, state, meta)
    else:
      save(self.latest, state, meta)
      self.last_saved = int(jax.device_get(state.step))

  def wait(self) -> None:
    for m in (self.latest, self.best):
      if m is not None:
        m.wait_until_finished()
