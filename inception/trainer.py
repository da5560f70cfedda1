"""The training loop: data -> jitted steps -> metrics, checkpoints, reports.

`train(config, workdir)` resumes from the newest readable checkpoint in `<workdir>/checkpoints`
and continues to the same result an uninterrupted run reaches (data order and dropout are
functions of (seed, step)). Host syncs happen only every `train.log_every_steps` steps, at
checkpoints and at epoch ends; in between the train metrics stay on the device.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

import data
from configs import validate as config_validate
from inception import checkpoints
from inception import evaluate
from inception import feature_cache
from inception import optim
from inception import param_rules
from inception import reporting
from inception import run_record
from inception import sharding
from inception import steps as steps_lib
from inception import transfer

DROPOUT_STREAM = 1  # fold_in(key(seed), DROPOUT_STREAM) is the dropout base key.


class NonFiniteLossError(RuntimeError):
  """Training stopped at a non-finite loss (train.on_nonfinite='stop')."""

  def __init__(self, step: int, workdir: Path, last_good: int | None):
    self.step = step
    super().__init__(
        f'Non-finite loss or gradient at step {step}; training stopped '
        f'(train.on_nonfinite="stop"). Last good checkpoint: '
        f'{"none" if last_good is None else f"step {last_good}"} in {workdir / "checkpoints"}. '
        f'Lower optimizer.lr, or set train.on_nonfinite="skip" to drop such batches.')


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
  backbone, provenance = transfer.load_pretrained(config.model.weights, config.model.cut, log)
  model = transfer.from_config(config, len(class_names), provenance['mixed10_pool'])
  variables = transfer.init_variables(model, config.data.image_size, config.seed)
  variables = transfer.replace_backbone(variables, backbone, config.model.weights)
  tx = optim.make(config.optimizer, variables['params'])
  mask = param_rules.trainable_mask(variables['params'], config.optimizer.param_rules)
  state = sharding.replicate(steps_lib.create_state(variables, tx), mesh)
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


def train(config: ml_collections.ConfigDict, workdir: str | Path, *,
          log: Callable[[str], None] = print, progress_bars: bool = True) -> dict:
  """Trains (or resumes) per `config` in `workdir`; returns the run summary (also summary.json).

  Raises:
    NonFiniteLossError: non-finite loss with train.on_nonfinite='stop'.
    RuntimeError: the workdir is locked by another run.
  """
  workdir = Path(workdir)
  config_validate.validate(config, workdir=workdir)
  lock = checkpoints.WorkdirLock(workdir).acquire()
  try:
    return _train_locked(config, workdir, log, progress_bars)
  finally:
    lock.release()


def _train_locked(config, workdir: Path, log, progress_bars: bool) -> dict:
  t_start = time.time()
  info = prepare_data(config, log)
  s = build(config, log=log, info=info)
  mesh, tc = s.mesh, config.train
  counts = param_rules.summary(jax.device_get(s.state.params), config.optimizer.param_rules)
  log(f'Devices: {jax.device_count()} ({jax.devices()[0].platform}), processes: '
      f'{jax.process_count()}; params per optimizer label: {counts}')

  ck = config.checkpoint
  mngr = checkpoints.manager(workdir / 'checkpoints', ck.keep, async_save=ck.async_save)
  best_mngr = checkpoints.manager(workdir / 'best', 1, async_save=ck.async_save) \
      if ck.keep_best else None
  state = s.state
  best = None  # {'accuracy', 'loss', 'epoch', 'step', 'metric'} of the best/ checkpoint
  meta: dict = {}
  try:
    state, meta = checkpoints.restore(mngr, state, sharding=sharding.replicated(mesh), log=log)
    start_step = int(meta['step'])
    best = meta.get('best')
    log(f'Resumed from {mngr.directory}/{start_step} (epoch {meta.get("epoch")}).')
  except checkpoints.NoCheckpointError as e:
    start_step = 0
    if mngr.all_steps():
      log(f'WARNING: {e}. STARTING TRAINING FROM SCRATCH.')
    else:
      log(f'No checkpoint in {mngr.directory}: starting from scratch.')

  if is_main():
    run_record.write(workdir, config, info, s.provenance)

  spe = data.steps_per_epoch(info, tc.batch_size)
  total_steps = tc.epochs * spe
  if spe < 1:
    raise ValueError(f'config.train.batch_size={tc.batch_size} is larger than the '
                     f'{info.num_examples["train"]} training examples')
  repl, dsh = sharding.replicated(mesh), sharding.data_sharded(mesh)
  # With the feature cache the steps run the head alone on cached cut-layer features (the
  # batches' 'image'); state, optimizer, dropout keys and batch order are the same.
  fc = feature_cache.FeatureCache.for_setup(config, s, state, log)
  step_model = s.model if fc is None else transfer.HeadOnly(s.model)
  train_step = steps_lib.make_train_step(
      step_model, s.tx, s.mask, train_blocks=config.model.batchnorm_train_blocks,
      guard_nonfinite=True, state_sharding=repl, batch_sharding=dsh)
  eval_step = steps_lib.make_eval_step(step_model, len(s.class_names), replicated=repl,
                                       batch_sharding=dsh)
  base_key = jax.device_put(jax.random.fold_in(jax.random.key(config.seed), DROPOUT_STREAM),
                            repl)
  # Records past the resumed step were written by the interrupted run: replaced, not repeated.
  writer = reporting.MetricsWriter(workdir, resume_step=start_step) if is_main() else None
  pidx, pcount = jax.process_index(), jax.process_count()

  def run_eval(st, split='validation'):
    kw = dict(split=split, batch_size=config.eval.batch_size, process_index=pidx,
              process_count=pcount)
    batches = data.eval_batches(info, config.data, **kw) if fc is None else \
        fc.eval_batches(**kw)
    return evaluate.evaluate_batches(
        eval_step, {'params': st.params, 'batch_stats': st.batch_stats}, batches, mesh)

  last_saved = start_step if start_step else None
  # Resuming mid-epoch: the epoch's earlier per-step metrics come from the checkpoint, so the
  # epoch's mean is the uninterrupted run's, bit for bit.
  carried = _records_from_meta(meta) if start_step % spe else []
  step = start_step
  val = None
  if start_step < total_steps:
    kw = dict(batch_size=tc.batch_size, seed=config.seed, start_step=start_step,
              process_index=pidx, process_count=pcount)
    batches = data.train_batches(info, config.data, **kw) if fc is None else \
        fc.train_batches(**kw)
    it = sharding.prefetch_to_device(batches, mesh, tc.prefetch_to_device)
    for epoch in range(start_step // spe + 1, tc.epochs + 1):
      epoch_records, carried = carried, []
      val = None
      pending: list[dict] = []
      pending_first = step
      bar = reporting.progress(epoch * spe - step, f'epoch {epoch}/{tc.epochs}',
                               disable=not (progress_bars and is_main()))
      t_sync = time.perf_counter()
      while step < epoch * spe:
        state, metrics = train_step(state, next(it), base_key)
        step += 1
        epoch_records.append(metrics)
        pending.append(metrics)
        boundary = step == epoch * spe
        save_now = (ck.every_steps and step % ck.every_steps == 0) or (
            boundary and (ck.every_epoch or step == total_steps))
        if step % tc.log_every_steps == 0 or boundary or save_now:
          bad = _first_nonfinite(pending, pending_first)
          if bad is not None and tc.on_nonfinite == 'stop':
            bar.close()
            mngr.wait_until_finished()
            raise NonFiniteLossError(bad, workdir, last_saved)
          if bad is not None:
            log(f'WARNING: non-finite loss at step {bad}; skipped that batch '
                f'(train.on_nonfinite="skip").')
          m = _mean(pending)
          now = time.perf_counter()
          bar.set_postfix(loss=f'{m["loss"]:.4f}', acc=f'{m["accuracy"]:.4f}',
                          img_s=f'{len(pending) * tc.batch_size / (now - t_sync):.1f}')
          bar.update(len(pending))
          if writer:
            writer.write('train', step, epoch, m)
          pending, pending_first, t_sync = [], step, now
        if save_now and not boundary:
          checkpoints.save(mngr, state, {'epoch': epoch - 1, 'best': best,
                                         'epoch_steps': _records_to_meta(epoch_records)})
          last_saved = step
      bar.close()
      train_m = _mean(epoch_records)
      line = f'epoch {epoch}/{tc.epochs}: loss {train_m["loss"]:.4f} accuracy ' \
             f'{train_m["accuracy"]:.4f}'
      if writer:
        writer.write('train_epoch', step, epoch, train_m)
      if epoch % tc.eval_every_epochs == 0 or epoch == tc.epochs:
        val = run_eval(state)
        line += f' | val_loss {val["loss"]:.4f} val_accuracy {val["accuracy"]:.4f}'
        if writer:
          writer.write('validation', step, epoch,
                       {'loss': val['loss'], 'accuracy': val['accuracy']})
      log(line)
      improved = val is not None and checkpoints.is_better(val, best, ck.best_metric)
      if improved:
        best = {'accuracy': val['accuracy'], 'loss': val['loss'], 'epoch': epoch, 'step': step,
                'metric': ck.best_metric}
      meta = {'epoch': epoch, 'best': best, 'train': train_m,
              'validation': None if val is None else
              {'loss': val['loss'], 'accuracy': val['accuracy']}}
      # Best first: a kill between the two saves then redoes this epoch, which saves it again.
      if best_mngr is not None and improved:
        checkpoints.save(best_mngr, state, meta)
      if ck.every_epoch or step == total_steps:
        checkpoints.save(mngr, state, meta)
        last_saved = step
  else:
    log(f'Training already finished ({start_step}/{total_steps} steps); reporting only.')

  mngr.wait_until_finished()
  if best_mngr is not None:
    best_mngr.wait_until_finished()
  if writer:
    writer.close()
  summary = finish(config, workdir, state, info, s.class_names, run_eval, log,
                   wall_time=time.time() - t_start, total_steps=total_steps,
                   provenance=s.provenance, resumed_from=start_step)
  mngr.close()
  if best_mngr is not None:
    best_mngr.close()
  return summary


def finish(config, workdir: Path, state, info, class_names, run_eval, log, *, wall_time: float,
           total_steps: int, provenance: dict, resumed_from: int) -> dict:
  """Final evaluation, plots, confusion matrix, seed table and summary.json."""
  val = run_eval(state, 'validation')
  test = run_eval(state, 'test') if info.num_examples.get('test', 0) else None
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
                           'count': val['count']},
      'best_validation': None if best is None else
      {'loss': best['loss'], 'accuracy': best['accuracy'], 'epoch': best['epoch']},
      'final_train': {k: last_train.get(k) for k in ('loss', 'accuracy')},
      'test': None if test is None else {'loss': test['loss'], 'accuracy': test['accuracy'],
                                         'count': test['count']},
      'weights': provenance, 'wall_time_s': wall_time,
  }
  if is_main():
    reporting.save_confusion(val['confusion'], class_names, workdir / 'confusion_validation')
    if test is not None:
      reporting.save_confusion(test['confusion'], class_names, workdir / 'confusion_test')
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
  log(f'Outputs in {workdir}: metrics.jsonl, tensorboard/, history.png, '
      f'confusion_validation.{{png,json}}, summary.json, run.json and data_manifest.json (the '
      f'run\'s record: eval and predict need only --workdir)')
  if info.is_synthetic:
    log(info.banner)
  return summary
