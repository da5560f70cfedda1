"""The training loop: data -> jitted steps -> metrics, checkpoints, reports.

`train(config, workdir)` resumes from the newest readable checkpoint in `<workdir>/checkpoints`
and continues to the same result an uninterrupted run reaches (data order and dropout are
functions of (seed, step)), and only with that run's config and data
(`run_record.check_resume`). Host syncs happen only every `train.log_every_steps` steps, at
checkpoints and at epoch ends; in between the train metrics stay on the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from etils import epath

import data
import data.config
from inception import checks
from inception import paths
from inception.train import checkpoints
from inception.train import feature_cache
from inception.train import metrics as metrics_lib
from inception.train import optim
from inception.train import param_rules
from inception.train import reporting
from inception.train import run_record
from inception.train import sharding
from inception.train import steps as steps_lib
from inception.models import transfer

DROPOUT_STREAM = 1  # fold_in(key(seed), DROPOUT_STREAM) is the dropout base key.
# train.py's exit status after a SIGTERM was honoured (128 + SIGTERM, as a shell reports a
# process ended by it): the checkpoint of the step reached is written; rerun to resume.
EXIT_PREEMPTED = 128 + signal.SIGTERM


class NonFiniteLossError(RuntimeError):
  """Training stopped at a non-finite loss (train.on_nonfinite='stop')."""

  def __init__(self, step: int, workdir: epath.Path, last_good: int | None):
    self.step = step
    super().__init__(
        f'Non-finite loss or gradient at step {step}; training stopped '
        f'(train.on_nonfinite="stop"). Last good checkpoint: '
        f'{"none" if last_good is None else f"step {last_good}"} in {workdir / "checkpoints"}. '
        f'Lower optimizer.lr, or set train.on_nonfinite="skip" to drop such batches.')


class Preempted(RuntimeError):
  """Training stopped on SIGTERM after writing the checkpoint of the step it had reached."""

  def __init__(self, step: int, workdir: epath.Path):
    self.step = step
    super().__init__(f'SIGTERM: stopped at step {step} after saving its checkpoint in '
                     f'{workdir / "checkpoints"}; rerun the same command to resume from it.')


class _PreemptionSignal:
  """While active, a SIGTERM asks the loop to save the step reached and stop.

  One process: the first SIGTERM sets `requested`; the default action is restored at once, so
  a second SIGTERM ends the process right away (the checkpoints committed before are
  untouched: orbax commits by renaming a finished folder). Several processes: JAX's
  preemption sync manager (started by `jax.distributed.initialize`) owns SIGTERM; a notice
  to any process reaches all of them, and `reached(step)`, called by every process at every
  step, turns True in all of them at the same step. Off the main thread (one process): inert.
  """

  def __init__(self, log: Callable[[str], None]):
    self.requested = False
    self._log, self._previous = log, None
    self._multiprocess = jax.process_count() > 1

  def _handle(self, signum, frame) -> None:
    del frame
    signal.signal(signum, signal.SIG_DFL)
    self.requested = True
    self._log('SIGTERM received: saving a checkpoint at the current step, then exiting '
              f'(exit status {EXIT_PREEMPTED}); a second SIGTERM ends the process now.')

  def reached(self, step: int) -> bool:
    """Whether to stop at `step` (every process calls it at every step, in order)."""
    if self._multiprocess and not self.requested:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        self.requested = True
        self._log(f'SIGTERM received by the job: every process saves step {step}, then exits '
                  f'(exit status {EXIT_PREEMPTED}).')
    return self.requested

  def __enter__(self) -> '_PreemptionSignal':
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class Setup:
  """Everything built from a config before the loop: data, model, optimizer, state, mesh."""
  info: Any
  model: transfer.TransferModel
  tx: Any
  mask: Any
  state: steps_lib.TrainState
  mesh: Any
  provenance: dict
  class_names: tuple[str, ...]


def is_main() -> bool:
  return jax.process_index() == 0


def prepare_data(config: ml_collections.ConfigDict, log: Callable[[str], None] = print):
  """`data.prepare` with the synthetic-data banner printed BEFORE its messages."""
  lines: list[str] = []
  info = data.prepare(config.data, log=lines.append)
  if info.is_synthetic:
    log(info.banner)
  for line in lines:
    log(line)
  return info


def build(config: ml_collections.ConfigDict, *, log: Callable[[str], None] = print,
          info: Any = None) -> Setup:
  """Prepares the data (unless `info` given), model with its pretrained backbone, masked
  optimizer and a replicated state."""
  if info is None:
    info = prepare_data(config, log)
  mesh = sharding.make_mesh()
  class_names = tuple(info.class_names)
  backbone, provenance = transfer.load_pretrained(config, log)
  model = transfer.from_config(config, len(class_names), provenance['variant'])
  variables = transfer.init_variables(model, config.data.image_size, config.seed)
  variables = transfer.replace_backbone(variables, backbone, config.model.weights)
  spe = data.steps_per_epoch(info, config.train.batch_size)
  tx = optim.make(config.optimizer, variables['params'], steps_per_epoch=spe,
                  total_steps=config.train.epochs * spe)
  mask = param_rules.trainable_mask(variables['params'], config.optimizer.param_rules)
  state = sharding.replicate(steps_lib.create_state(
      variables, tx, mask=mask, ema=bool(config.train.ema_decay)), mesh)
  return Setup(info, model, tx, mask, state, mesh, provenance, class_names)


def _mean(records: list[dict]) -> dict[str, float]:
  """Means of per-step scalar metrics (device arrays), fetched in one transfer."""
  host = jax.device_get(records)
  return {k: float(np.mean([r[k] for r in host])) for k in ('loss', 'accuracy')}


def _records_to_meta(records: list[dict]) -> dict[str, list[float]]:
  """Per-step 'loss'/'accuracy' values for a checkpoint's JSON meta (float32 -> exact float)."""
  host = jax.device_get(records)
  return {k: [float(r[k]) for r in host] for k in ('loss', 'accuracy')}


def _records_from_meta(meta: dict) -> list[dict]:
  """Inverse of `_records_to_meta` (float32 values again, so means are bit-identical)."""
  steps = meta.get('epoch_steps') or {'loss': [], 'accuracy': []}
  return [{'loss': np.float32(l), 'accuracy': np.float32(a)}
          for l, a in zip(steps['loss'], steps['accuracy'])]


def _first_nonfinite(records: list[dict], first_step: int) -> int | None:
  flags = jax.device_get([r['nonfinite'] for r in records])
  for i, f in enumerate(flags):
    if int(f):
      return first_step + i + 1  # the step number after the update (1-based step count)
  return None


NONFINITE = ('stop', 'skip')
LOSSES = ('auto',)


def validate_config(config: ml_collections.ConfigDict, *, workdir: str | os.PathLike | None = None,
                    device_count: int | None = None) -> None:
  """Checks a run config section by section, each by the code that owns it (data, model,
  optimizer; the seed, train, checkpoint and eval sections here); ValueError names the first
  bad key and what is valid. `configs/validate.py` adds the unknown-key check.

  workdir: checked to be creatable and writable, when given. device_count: batch sizes must
  divide by it (default: jax.device_count()).
  """
  checks.number('seed', config.seed, lo=0, integer=True)
  data.config.validate(config.data)
  transfer.validate_config(config)
  optim.validate_config(config.optimizer)
  t = config.train
  checks.number('train.epochs', t.epochs, lo=1, integer=True)
  checks.number('train.batch_size', t.batch_size, lo=1, integer=True)
  checks.choice('train.loss', t.loss, LOSSES)
  checks.choice('train.on_nonfinite', t.on_nonfinite, NONFINITE)
  checks.number('train.label_smoothing', t.label_smoothing, lo=0, hi=1, hi_open=True)
  checks.number('train.ema_decay', t.ema_decay, lo=0, hi=1, hi_open=True)
  steps_lib.check_tta(config.eval.tta)
  checks.number('train.log_every_steps', t.log_every_steps, lo=1, integer=True)
  checks.number('train.eval_every_epochs', t.eval_every_epochs, lo=1, integer=True)
  checks.number('train.prefetch_to_device', t.prefetch_to_device, lo=1, integer=True)
  feature_cache.validate_config(t)
  if t.feature_cache == 'on':
    # Config-only reasons here; the param_rules one needs the param tree (start-up).
    feature_cache.check_on(config)
  k = config.checkpoint
  checks.number('checkpoint.every_steps', k.every_steps, lo=0, integer=True)
  checks.boolean('checkpoint.every_epoch', k.every_epoch)
  checks.number('checkpoint.keep', k.keep, lo=1, integer=True)
  checks.boolean('checkpoint.keep_best', k.keep_best)
  checks.choice('checkpoint.best_metric', k.best_metric, checkpoints.BEST_METRICS)
  checks.boolean('checkpoint.async_save', k.async_save)
  checks.number('eval.batch_size', config.eval.batch_size, lo=1, integer=True)
  if device_count is None:
    device_count = jax.device_count()
  for key, value in (('train.batch_size', t.batch_size),
                     ('eval.batch_size', config.eval.batch_size)):
    if value % device_count:
      raise ValueError(f'config.{key}={value} is not divisible by the device count '
                       f'{device_count}; use a multiple of {device_count}')
  if workdir is not None:
    check_workdir(workdir)


def check_workdir(workdir: str | os.PathLike) -> None:
  """The workdir (a local path or a URI) exists or can be created, and is writable."""
  path = paths.as_path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f'--workdir {path} cannot be created: {e.strerror or e}; choose another '
                     f'--workdir') from None
  if paths.is_local(path):
    if not os.access(path, os.W_OK | os.X_OK):
      raise ValueError(f'--workdir {path} is not writable; choose another --workdir')
    return
  probe = path / f'.write-test-{os.getpid()}'  # An object store has no permission bits to ask.
  try:
    paths.write_text(probe, 'ok')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  # Each file system raises its own.
    raise ValueError(f'--workdir {path} is not writable ({type(e).__name__}: {e}); choose '
                     'another --workdir') from None


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          log: Callable[[str], None] = print, progress_bars: bool = True,
          lock: checkpoints.WorkdirLock | None = None) -> dict:
  """Trains (or resumes) per `config` in `workdir`; returns the run summary (also summary.json).

  Raises:
    NonFiniteLossError: non-finite loss with train.on_nonfinite='stop'.
    Preempted: SIGTERM (single process): the checkpoint of the step reached is written.
    RuntimeError: the workdir is locked by another run.
    run_record.ConfigMismatchError: the workdir holds a run's checkpoints and `config` or the
      data differs from that run's (`run_record.RESUME_CHANGEABLE` may change).

  lock: the caller's already acquired lock of `workdir` (e.g. a sweep runner that claimed the
  run); released by the caller. By default the workdir is locked here.
  """
  workdir = paths.as_path(workdir)
  validate_config(config, workdir=workdir)
  if lock is not None:
    if not paths.same(lock.path.parent, workdir):
      raise ValueError(f'lock {lock.path} is not the lock of --workdir {workdir}')
    return _train_locked(config, workdir, log, progress_bars)
  with _job_lock(workdir):
    return _train_locked(config, workdir, log, progress_bars)


def _on_main_agreed(fn: Callable[[], Any], catch: type[Exception] | tuple[type[Exception], ...],
                    refused: Exception) -> Any:
  """fn() in process 0 only. When it raises one of `catch`, every process raises: process 0
  its error, the others `refused`; so none starts collectives the others will never join."""
  value, error = None, None
  if is_main():
    try:
      value = fn()
    except catch as e:
      error = e
  if not sharding.all_agree(error is None):
    raise error or refused
  return value


@contextlib.contextmanager
def _job_lock(workdir: epath.Path):
  """The workdir lock, held by process 0 for the whole job."""
  lock = checkpoints.WorkdirLock(workdir)
  _on_main_agreed(lock.acquire, RuntimeError, RuntimeError(
      f'Workdir {workdir} is in use by another run (process 0 could not lock {lock.path}).'))
  try:
    yield
  finally:
    lock.release()


def _run_to_resume(config, workdir: epath.Path, log) -> run_record.RunRecord | None:
  """The record of the run this command resumes, checked against `config` (process 0).

  None for a new run: no record, or a record whose run saved no checkpoint (it is replaced).
  Raises:
    run_record.ConfigMismatchError: `config` trains differently from the recorded run.
    ValueError: the record is unreadable or of another format.
  """
  def check():
    if not (workdir / run_record.RECORD).exists():
      return None
    latest = workdir / 'checkpoints'
    if not (latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir())):
      return None
    record = run_record.load(workdir)
    run_record.check_resume(record, config, log)
    return record
  return _on_main_agreed(check, ValueError, run_record.ConfigMismatchError(
      f'Process 0 refused to resume the run in {workdir}; its message says why.'))


def _train_locked(config, workdir: epath.Path, log, progress_bars: bool) -> dict:
  t_start = time.time()
  resumed = _run_to_resume(config, workdir, log)
  info = prepare_data(config, log)
  _on_main_agreed(lambda: resumed and run_record.check_resume_data(resumed, info),
                  run_record.ConfigMismatchError, run_record.ConfigMismatchError(
                      f'Process 0 refused to resume the run in {workdir} on this data; its '
                      'message says why.'))
  s = build(config, log=log, info=info)
  counts = param_rules.summary(jax.device_get(s.state.params), config.optimizer.param_rules)
  log(f'Devices: {jax.device_count()} ({jax.devices()[0].platform}), processes: '
      f'{jax.process_count()}; params per optimizer label: {counts}')
  spe = data.steps_per_epoch(info, config.train.batch_size)
  with contextlib.ExitStack() as resources:
    preemption = resources.enter_context(_PreemptionSignal(log))
    ckpt = resources.enter_context(_Checkpoints(workdir, config.checkpoint, s.mesh))
    state, meta = ckpt.restore_or_start(s.state, log)
    start_step = int(meta.get('step', 0))
    if is_main():
      run_record.write(workdir, config, info, s.provenance)
    loop = _Loop(config, workdir, info, s, state, ckpt, log, spe, start_step,
                 best=meta.get('best'), preemption=preemption)
    # Records past the resumed step were written by the interrupted run: replaced, not repeated.
    loop.writer = resources.enter_context(
        reporting.MetricsWriter(workdir, resume_step=start_step)) if is_main() else None
    if start_step < loop.total_steps:
      # Resuming mid-epoch: the epoch's earlier per-step metrics come from the checkpoint, so
      # the epoch's mean is the uninterrupted run's, bit for bit.
      loop.run(carried=_records_from_meta(meta) if start_step % spe else [],
               progress_bars=progress_bars)
    else:
      log(f'Training already finished ({start_step}/{loop.total_steps} steps); reporting only.')
    ckpt.wait()
    if loop.writer:
      loop.writer.close()  # finish() reads metrics.jsonl back, in every process.
    sharding.barrier('metrics.jsonl complete')
    return finish(config, workdir, loop.state, info, s.class_names, loop.evaluate, log,
                  wall_time=time.time() - t_start, total_steps=loop.total_steps,
                  provenance=s.provenance, resumed_from=start_step)


class _Checkpoints:
  """The run's two checkpoint managers (latest ones, best one); closed on every exit path."""

  def __init__(self, workdir: epath.Path, ck: ml_collections.ConfigDict, mesh):
    self.workdir, self.sharding = workdir, sharding.replicated(mesh)
    self.latest = checkpoints.manager(workdir / 'checkpoints', ck.keep,
                                      async_save=ck.async_save)
    self.best = checkpoints.manager(workdir / 'best', 1, async_save=ck.async_save) \
        if ck.keep_best else None
    self.last_saved: int | None = None

  def __enter__(self) -> '_Checkpoints':
    return self

  def __exit__(self, *exc) -> None:
    for m in (self.latest, self.best):
      if m is not None:
        m.close()  # Waits for pending async saves first.

  def restore_or_start(self, state, log) -> tuple[Any, dict]:
    """(state, meta) of the newest readable checkpoint, or (`state`, {}) from scratch."""
    try:
      state, meta = checkpoints.restore(self.latest, state, sharding=self.sharding, log=log)
    except checkpoints.NoCheckpointError as e:
      if self.latest.all_steps():
        log(f'WARNING: {e}. STARTING TRAINING FROM SCRATCH.')
      else:
        log(f'No checkpoint in {self.latest.directory}: starting from scratch.')
      return state, {}
    self.last_saved = int(meta['step'])
    log(f'Resumed from {self.latest.directory}/{meta["step"]} (epoch {meta.get("epoch")}).')
    return state, meta

  def save(self, state, meta: dict, *, best: bool = False) -> None:
    if best:
      checkpoints.save(self.best, state, meta)
    else:
      checkpoints.save(self.latest, state, meta)
      self.last_saved = int(jax.device_get(state.step))

  def wait(self) -> None:
    for m in (self.latest, self.best):
      if m is not None:
        m.wait_until_finished()


class _Loop:
  """The epochs of one run: train steps with periodic metric syncs and saves, then each
  epoch's evaluation, best checkpoint and checkpoint."""

  def __init__(self, config, workdir: epath.Path, info, setup: Setup, state,
               ckpt: _Checkpoints, log, steps_per_epoch: int, start_step: int, best: dict | None,
               preemption: _PreemptionSignal):
    self.config, self.workdir, self.info, self.log = config, workdir, info, log
    self.state, self.ckpt, self.spe, self.step, self.best = state, ckpt, steps_per_epoch, \
        start_step, best
    self.total_steps = config.train.epochs * steps_per_epoch
    self.mesh, self.writer, self.preemption = setup.mesh, None, preemption
    self.mask = setup.mask
    repl, dsh = sharding.replicated(self.mesh), sharding.data_sharded(self.mesh)
    # With the feature cache the steps run the head alone on cached cut-layer features (the
    # batches' 'image'); state, optimizer, dropout keys and batch order are the same.
    self.cache = feature_cache.FeatureCache.for_setup(config, setup, state, log)
    step_model = setup.model if self.cache is None else transfer.HeadOnly(setup.model)
    self.train_step = steps_lib.make_train_step(
        step_model, setup.tx, setup.mask, train_blocks=config.model.batchnorm_train_blocks,
        label_smoothing=config.train.label_smoothing, ema_decay=config.train.ema_decay,
        guard_nonfinite=True, state_sharding=repl, batch_sharding=dsh)
    self.eval_step = steps_lib.make_eval_step(step_model, len(setup.class_names),
                                              replicated=repl, batch_sharding=dsh)
    self.base_key = sharding.replicate(
        jax.random.fold_in(jax.random.key(config.seed), DROPOUT_STREAM), self.mesh)
    self.shard = dict(process_index=jax.process_index(), process_count=jax.process_count())

  def evaluate(self, state, split: str = 'validation') -> dict:
    kw = dict(split=split, batch_size=self.config.eval.batch_size, **self.shard)
    batches = data.eval_batches(self.info, self.config.data, **kw) if self.cache is None \
        else self.cache.eval_batches(**kw)
    # With train.ema_decay the EMA is what is evaluated (and so what `best` selects).
    variables = {'params': steps_lib.eval_params(state, self.mask),
                 'batch_stats': state.batch_stats}
    return steps_lib.evaluate_batches(self.eval_step, variables, batches, self.mesh)

  def run(self, carried: list[dict], progress_bars: bool) -> None:
    tc = self.config.train
    kw = dict(batch_size=tc.batch_size, seed=self.config.seed, start_step=self.step,
              **self.shard)
    batches = data.train_batches(self.info, self.config.data, **kw) if self.cache is None \
        else self.cache.train_batches(**kw)
    it = sharding.prefetch_to_device(batches, self.mesh, tc.prefetch_to_device)
    for epoch in range(self.step // self.spe + 1, tc.epochs + 1):
      records = self._train_epoch(epoch, it, carried, progress_bars)
      carried = []
      meta = self._end_epoch(epoch, records)
      if self.preemption.requested:  # Came during the epoch's last step or its evaluation.
        self._stop_preempted(meta)

  def _stop_preempted(self, meta: dict) -> None:
    """Saves the step reached (unless just saved), waits for the write, raises Preempted."""
    if self.ckpt.last_saved != self.step:
      self.ckpt.save(self.state, meta)
    self.ckpt.wait()
    raise Preempted(self.step, self.workdir)

  def _train_epoch(self, epoch: int, it, records: list[dict], progress_bars: bool
                   ) -> list[dict]:
    """Steps to the end of `epoch`; returns its per-step metrics (device arrays)."""
    tc, ck = self.config.train, self.config.checkpoint
    pending: list[dict] = []
    pending_first = self.step
    end = epoch * self.spe
    bar = reporting.progress(end - self.step, f'epoch {epoch}/{tc.epochs}',
                             disable=not (progress_bars and is_main()))
    t_sync = time.perf_counter()
    with bar:
      while self.step < end:
        self.state, metrics = self.train_step(self.state, next(it), self.base_key)
        self.step += 1
        records.append(metrics)
        pending.append(metrics)
        boundary = self.step == end
        save_now = (ck.every_steps and self.step % ck.every_steps == 0) or (
            boundary and (ck.every_epoch or self.step == self.total_steps))
        if self.step % tc.log_every_steps == 0 or boundary or save_now:
          self._sync(pending, pending_first, epoch, bar, time.perf_counter() - t_sync)
          pending, pending_first, t_sync = [], self.step, time.perf_counter()
        preempted = self.preemption.reached(self.step) and not boundary
        # (A boundary step goes on to the epoch's evaluation and checkpoint first.)
        if (save_now or preempted) and not boundary:
          mid_epoch = {'epoch': epoch - 1, 'best': self.best,
                       'epoch_steps': _records_to_meta(records)}
          if preempted:
            self._check_nonfinite(pending, pending_first)
            self._stop_preempted(mid_epoch)
          self.ckpt.save(self.state, mid_epoch)
    return records

  def _sync(self, pending: list[dict], first_step: int, epoch: int, bar, seconds: float
            ) -> None:
    """The host sync every log_every_steps: non-finite check, progress, metrics record."""
    tc = self.config.train
    self._check_nonfinite(pending, first_step)
    m = _mean(pending)
    bar.set_postfix(loss=f'{m["loss"]:.4f}', acc=f'{m["accuracy"]:.4f}',
                    img_s=f'{len(pending) * tc.batch_size / seconds:.1f}')
    bar.update(len(pending))
    if self.writer:
      self.writer.write('train', self.step, epoch, m)

  def _check_nonfinite(self, pending: list[dict], first_step: int) -> None:
    bad = _first_nonfinite(pending, first_step)
    if bad is not None and self.config.train.on_nonfinite == 'stop':
      self.ckpt.wait()
      raise NonFiniteLossError(bad, self.workdir, self.ckpt.last_saved)
    if bad is not None:
      self.log(f'WARNING: non-finite loss at step {bad}; skipped that batch '
               f'(train.on_nonfinite="skip").')

  def _end_epoch(self, epoch: int, records: list[dict]) -> dict:
    """The epoch's mean metrics, validation, best checkpoint and checkpoint; returns its meta."""
    tc, ck = self.config.train, self.config.checkpoint
    train_m = _mean(records)
    line = f'epoch {epoch}/{tc.epochs}: loss {train_m["loss"]:.4f} accuracy ' \
           f'{train_m["accuracy"]:.4f}'
    if self.writer:
      self.writer.write('train_epoch', self.step, epoch, train_m)
    val = None
    if epoch % tc.eval_every_epochs == 0 or epoch == tc.epochs:
      val = self.evaluate(self.state)
      line += f' | val_loss {val["loss"]:.4f} val_accuracy {val["accuracy"]:.4f}'
      if self.writer:
        self.writer.write('validation', self.step, epoch,
                          {'loss': val['loss'], 'accuracy': val['accuracy']})
    self.log(line)
    improved = val is not None and checkpoints.is_better(val, self.best, ck.best_metric)
    if improved:
      self.best = {'accuracy': val['accuracy'], 'loss': val['loss'], 'epoch': epoch,
                   'step': self.step, 'metric': ck.best_metric}
    meta = {'epoch': epoch, 'best': self.best, 'train': train_m,
            'validation': None if val is None else
            {'loss': val['loss'], 'accuracy': val['accuracy']}}
    # Best first: a kill between the two saves then redoes this epoch, which saves it again.
    if self.ckpt.best is not None and improved:
      self.ckpt.save(self.state, meta, best=True)
    if ck.every_epoch or self.step == self.total_steps:
      self.ckpt.save(self.state, meta)
    return meta


def finish(config, workdir: epath.Path, state, info, class_names, run_eval, log, *,
           wall_time: float, total_steps: int, provenance: dict, resumed_from: int) -> dict:
  """Final evaluation, plots, confusion matrix, seed table and summary.json."""
  val = run_eval(state, 'validation')
  test = run_eval(state, 'test') if info.num_examples.get('test', 0) else None
  reports = {split: metrics_lib.report(res['sums'], class_names)
             for split, res in (('validation', val), ('test', test)) if res is not None}
  records = reporting.read_metrics(workdir)
  history = reporting.epoch_history(records)
  best = checkpoints.best_of([history['validation'][e] for e in sorted(history['validation'])],
                             config.checkpoint.best_metric)
  last_train = history['train'][max(history['train'])] if history['train'] else {}
  summary = {
      'data': info.description, 'synthetic': bool(info.is_synthetic),
      'steps': int(jax.device_get(state.step)), 'total_steps': total_steps,
      'epochs': config.train.epochs, 'resumed_from_step': resumed_from,
      'final_validation': {'loss': val['loss'], 'accuracy': val['accuracy'],
                           'count': val['count'], 'metrics': reports['validation']},
      'best_validation': None if best is None else
      {'loss': best['loss'], 'accuracy': best['accuracy'], 'epoch': best['epoch']},
      'final_train': {k: last_train.get(k) for k in ('loss', 'accuracy')},
      'test': None if test is None else {'loss': test['loss'], 'accuracy': test['accuracy'],
                                         'count': test['count'], 'metrics': reports['test']},
      'weights': provenance, 'wall_time_s': wall_time,
  }
  if is_main():
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
  table = reporting.seed_table(history)
  log(table)
  if test is not None:
    log(f'test: accuracy {test["accuracy"]:.4f} loss {test["loss"]:.4f} (n={test["count"]})')
    log(metrics_lib.format_report(reports['test']))
  log(f'Outputs in {workdir}: metrics.jsonl, tensorboard/, history.png, '
      f'confusion_validation.{{png,json}}, reliability_validation.png, summary.json, run.json '
      f'and data_manifest.json (the run\'s record: eval and predict need only --workdir)')
  if info.is_synthetic:
    log(info.banner)
  return summary
