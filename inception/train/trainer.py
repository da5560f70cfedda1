"""The training loop: a flat loop over steps, each followed by the periodic actions now due.

    for step in range(start + 1, total + 1):
      state, metrics = train_step(state, next(batches), base_key)
      for action in actions:            # sync, end of epoch, best, checkpoint, preemption
        if action.due(progress): action.run(progress)

`train(config, workdir)` resumes from the newest readable checkpoint in `<workdir>/checkpoints`
and continues to the same result an uninterrupted run reaches (data order and dropout are
functions of (seed, step)), and only with that run's config and data (`resume`). The epoch of
a step is `(step - 1) // steps_per_epoch + 1`. Host syncs happen only when an action runs
(`actions.SyncMetrics`); in between the train metrics stay on the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable

import jax
import ml_collections
from etils import epath

import data
from data import pipeline as data_pipeline
from inception import paths
from inception import transfer
from inception.train import actions as actions_lib
from inception.train import batches
from inception.train import checkpoints
from inception.train import final_report
from inception.train import optim
from inception.train import param_rules
from inception.train import preemption
from inception.train import reporting
from inception.train import resume
from inception.train import run_record
from inception.train import sharding
from inception.train import steps as steps_lib
from inception.train import validate
from inception.train import warm_start
from inception.train import xla_options

DROPOUT_STREAM = 1  # fold_in(key(seed), DROPOUT_STREAM) is the dropout base key.


@dataclasses.dataclass
class Setup:
  """Everything built from a config before the loop: data, model, optimizer, the (restored)
  state, mesh, the batch source and the jitted steps for its `step_model`."""
  config: ml_collections.ConfigDict
  info: Any
  model: transfer.TransferModel
  tx: Any
  mask: Any
  state: steps_lib.TrainState
  mesh: Any
  provenance: dict
  class_names: tuple[str, ...]
  source: batches.BatchSource
  train_step: Callable
  eval_step: Callable
  resumed_meta: dict  # The restored checkpoint's meta; {} from scratch.
  init_from: dict | None = None  # A warm start's lineage (model.init_from), when it ran.
  class_weights: Any = None  # train.class_weight resolved: float32 [K]; None = unweighted.

  @property
  def steps_per_epoch(self) -> int:
    return data.steps_per_epoch(self.info, self.config.train.batch_size)

  @property
  def total_steps(self) -> int:
    return self.config.train.epochs * self.steps_per_epoch

  def evaluate(self, state: steps_lib.TrainState, split: str = 'validation') -> dict:
    """`steps.evaluate_batches` of `split`; with train.ema_decay the EMA is what is evaluated
    (and so what `best` selects)."""
    variables = {'params': steps_lib.eval_params(state, self.mask),
                 'batch_stats': state.batch_stats}
    return steps_lib.evaluate_batches(self.eval_step, variables,
                                      self.source.eval_batches(split), self.mesh)


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
          info: Any = None, resume_from: checkpoints.RunCheckpoints | None = None,
          feature_dir: str | os.PathLike | None = None) -> Setup:
  """Prepares the data (unless `info` given); builds the model with its pretrained backbone,
  the masked optimizer and a replicated state, restored from `resume_from`'s newest checkpoint
  when it has one, else warm-started from `model.init_from` when set; chooses the batch
  source (cached features under `feature_dir`, default <cache>/features, or the files) and
  makes the steps for it (with the train split's class weights)."""
  if info is None:
    info = prepare_data(config, log)
  mesh = sharding.make_mesh()
  class_names = tuple(info.class_names)
  loss_weights = class_weights(config, info, log)  # None: unweighted.
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
  meta, lineage = {}, None
  if resume_from is not None:
    state, meta = resume_from.restore_or_start(state, mesh, log)
  if not meta and config.model.get('init_from'):
    variables, lineage = warm_start.initialize(config.model.init_from, variables, mesh, log)
    state = sharding.replicate(steps_lib.create_state(
        variables, tx, mask=mask, ema=bool(config.train.ema_decay)), mesh)
  # The features come from this state's backbone: a resumed run's is its checkpoint's.
  source = batches.choose(config, model, state, info, provenance, mesh,
                          feature_dir=feature_dir, log=log)
  repl, dsh = sharding.replicated(mesh), sharding.data_sharded(mesh)
  train_step = steps_lib.make_train_step(
      source.step_model, tx, mask, train_blocks=config.model.batchnorm_train_blocks,
      label_smoothing=config.train.label_smoothing, ema_decay=config.train.ema_decay,
      guard_nonfinite=True, grad_accum_steps=config.train.grad_accum_steps,
      class_weights=loss_weights, state_sharding=repl, batch_sharding=dsh)
  eval_step = steps_lib.make_eval_step(source.step_model, len(class_names), replicated=repl,
                                       batch_sharding=dsh)
  return Setup(config, info, model, tx, mask, state, mesh, provenance, class_names, source,
               train_step, eval_step, meta, lineage, class_weights=loss_weights)


def class_weights(config: ml_collections.ConfigDict, info: Any,
                  log: Callable[[str], None] = print) -> Any:
  """train.class_weight resolved from the train split's labels (`steps.class_weights`),
  logged when the loss is weighted."""
  if config.train.class_weight == 'none':
    return None
  weights = steps_lib.class_weights(config.train.class_weight, info.class_names,
                                    data_pipeline.split_files(info, 'train')[1])
  log(f'Class weights (train.class_weight={config.train.class_weight!r}): ' +
      ', '.join(f'{n} {w:.6g}' for n, w in zip(info.class_names, weights)))
  return weights


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          log: Callable[[str], None] = print, progress_bars: bool = True,
          lock: checkpoints.WorkdirLock | None = None,
          feature_dir: str | os.PathLike | None = None) -> dict:
  """Trains (or resumes) per `config` in `workdir`; returns the run summary (also summary.json).

  Raises:
    actions.NonFiniteLossError: non-finite loss with train.on_nonfinite='stop'.
    preemption.Preempted: SIGTERM: the checkpoint of the step reached is written.
    RuntimeError: the workdir is locked by another run.
    run_record.ConfigMismatchError: the workdir holds a run's checkpoints and `config` or the
      data differs from that run's (`run_record.RESUME_CHANGEABLE` may change).

  lock: the caller's already acquired lock of `workdir` (e.g. a sweep runner that claimed the
  run); released by the caller. By default the workdir is locked here. feature_dir: see
  `build`.
  """
  workdir = paths.as_path(workdir)
  validate.validate_config(config, workdir=workdir)
  if lock is not None and not paths.same(lock.path.parent, workdir):
    raise ValueError(f'lock {lock.path} is not the lock of --workdir {workdir}')
  with contextlib.nullcontext() if lock is not None else checkpoints.job_lock(workdir):
    return _train_locked(config, workdir, log, progress_bars, feature_dir)


def _train_locked(config, workdir: epath.Path, log, progress_bars: bool, feature_dir) -> dict:
  t_start = time.time()
  resumed = resume.run_to_resume(config, workdir, log)
  info = prepare_data(config, log)
  resume.check_data(resumed, info, workdir)
  with contextlib.ExitStack() as resources:
    ckpt = resources.enter_context(checkpoints.RunCheckpoints(workdir, config.checkpoint))
    s = build(config, log=log, info=info, resume_from=ckpt, feature_dir=feature_dir)
    counts = param_rules.summary(jax.device_get(s.state.params), config.optimizer.param_rules)
    log(f'Devices: {jax.device_count()} ({jax.devices()[0].platform}), processes: '
        f'{jax.process_count()}; params per optimizer label: {counts}')
    compiler = xla_options.choose()
    log(compiler.describe())
    start_step = int(s.resumed_meta.get('step', 0))
    if jax.process_index() == 0:  # A resumed warm start keeps the lineage it started with.
      run_record.write(workdir, config, info, s.provenance,
                       init_from=s.init_from or (resumed.init_from if resumed else None),
                       xla_options=compiler.to_json())
    # Records past the resumed step were written by the interrupted run: replaced, not repeated.
    writer = resources.enter_context(reporting.MetricsWriter(
        workdir, resume_step=start_step)) if jax.process_index() == 0 else None
    # Resuming mid-epoch: the epoch's earlier per-step metrics come from the checkpoint, so the
    # epoch's mean is the uninterrupted run's, bit for bit.
    epoch_metrics = actions_lib.EpochMetrics.from_meta(
        s.resumed_meta if start_step % s.steps_per_epoch else {})
    p = actions_lib.Progress(setup=s, workdir=workdir, ckpt=ckpt, writer=writer, log=log,
                             state=s.state, step=start_step, epoch_metrics=epoch_metrics,
                             best=s.resumed_meta.get('best'))
    if start_step < s.total_steps:
      signal = resources.enter_context(preemption.PreemptionSignal(log))
      _loop(s, p, actions_lib.default_actions(p, signal, progress_bars))
    else:
      log(f'Training already finished ({start_step}/{s.total_steps} steps); reporting only.')
    ckpt.wait()
    if writer:
      writer.close()  # finish() reads metrics.jsonl back, in every process.
    sharding.barrier('metrics.jsonl complete')
    return final_report.finish(s, workdir, p.state, log, wall_time=time.time() - t_start,
                               resumed_from=start_step)


def _loop(s: Setup, p: actions_lib.Progress, actions: list) -> None:
  """Steps from `p.step` to the last one; after each, the actions that are due."""
  base_key = sharding.replicate(
      jax.random.fold_in(jax.random.key(s.config.seed), DROPOUT_STREAM), s.mesh)
  train_batches = sharding.prefetch_to_device(s.source.train_batches(start_step=p.step),
                                              s.mesh, s.config.train.prefetch_to_device)
  for step in range(p.step + 1, s.total_steps + 1):
    p.state, metrics = s.train_step(p.state, next(train_batches), base_key)
    p.step = step
    p.epoch_metrics.add(metrics)
    for action in actions:
      if action.due(p):
        action.run(p)
