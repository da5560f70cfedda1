"""The loop's periodic actions, run after each train step when due, in this order:

    SyncMetrics       every train.log_every_steps, at epoch ends and checkpoint steps: the
                      host sync (non-finite check, progress bar, a 'train' record)
    EndEpoch          at epoch ends: the epoch's mean metrics, validation every
                      train.eval_every_epochs and at the last epoch
    SaveBest          after a validation that beats the best so far (checkpoint.keep_best)
    SaveCheckpoint    every checkpoint.every_steps, at epoch ends (checkpoint.every_epoch)
                      and at the last step
    StopOnPreemption  after a SIGTERM: the step reached is saved, then `Preempted`

Between syncs the train metrics stay on the device. They collect in one `EpochMetrics`, whose
state goes into a mid-epoch checkpoint, so a resumed epoch's mean is the uninterrupted one's.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np
from etils import epath

from inception import checks
from inception.train import checkpoints
from inception.train import preemption as preemption_lib
from inception.train import reporting

NONFINITE = ('stop', 'skip')
METRICS = ('loss', 'accuracy')


def validate_config(train: Any) -> None:
  """Checks the keys of `config.train` the actions take (ValueError naming the key)."""
  checks.number('train.log_every_steps', train.log_every_steps, lo=1, integer=True)
  checks.number('train.eval_every_epochs', train.eval_every_epochs, lo=1, integer=True)
  checks.choice('train.on_nonfinite', train.on_nonfinite, NONFINITE)


class NonFiniteLossError(RuntimeError):
  """Training stopped at a non-finite loss (train.on_nonfinite='stop')."""

  def __init__(self, step: int, workdir: epath.Path, last_good: int | None):
    self.step = step
    super().__init__(
        f'Non-finite loss or gradient at step {step}; training stopped '
        f'(train.on_nonfinite="stop"). Last good checkpoint: '
        f'{"none" if last_good is None else f"step {last_good}"} in {workdir / "checkpoints"}. '
        f'Lower optimizer.lr, or set train.on_nonfinite="skip" to drop such batches.')


class EpochMetrics:
  """The accumulator: the current epoch's per-step train metrics ('loss', 'accuracy' and
  'nonfinite' scalars, device arrays until read), and how many of them were synced."""

  def __init__(self, carried: list[dict] | None = None):
    self.records = list(carried or [])
    self.synced = len(self.records)  # Carried records were checked by the run that made them.

  @classmethod
  def from_meta(cls, meta: dict) -> 'EpochMetrics':
    """The accumulator a mid-epoch checkpoint's meta saved (`to_meta`): float32 values again,
    so means are bit-identical."""
    steps = meta.get('epoch_steps') or {k: [] for k in METRICS}
    return cls([{'loss': np.float32(l), 'accuracy': np.float32(a)}
                for l, a in zip(steps['loss'], steps['accuracy'])])

  def to_meta(self) -> dict[str, list[float]]:
    """{'loss': [...], 'accuracy': [...]} per step so far (float32 -> exact float)."""
    host = jax.device_get(self.records)
    return {k: [float(r[k]) for r in host] for k in METRICS}

  def add(self, metrics: dict) -> None:
    self.records.append(metrics)

  def unsynced(self) -> list[dict]:
    return self.records[self.synced:]

  def mark_synced(self) -> None:
    self.synced = len(self.records)

  def mean(self, records: list[dict] | None = None) -> dict[str, float]:
    """Means of 'loss' and 'accuracy' over `records` (default: the epoch's), in one transfer."""
    host = jax.device_get(self.records if records is None else records)
    return {k: float(np.mean([r[k] for r in host])) for k in METRICS}


@dataclasses.dataclass
class Progress:
  """What the actions of one run read and update, at `step` (1-based, after its update)."""
  setup: Any  # The run's `trainer.Setup`: config, steps per epoch, `evaluate(state, split)`.
  workdir: epath.Path
  ckpt: checkpoints.RunCheckpoints
  writer: reporting.MetricsWriter | None  # Process 0 only.
  log: Callable[[str], None]
  state: Any
  step: int
  epoch_metrics: EpochMetrics
  best: dict | None  # The best validation so far: accuracy, loss, epoch, step, metric.
  epoch_summary: dict | None = None  # {'epoch', 'train', 'validation'} at an epoch's end.
  improved: bool = False  # Whether this step's validation beat `best`.

  @property
  def config(self) -> Any:
    return self.setup.config

  @property
  def steps_per_epoch(self) -> int:
    return self.setup.steps_per_epoch

  @property
  def total_steps(self) -> int:
    return self.setup.total_steps

  @property
  def epoch(self) -> int:
    """The epoch `step` belongs to (1-based)."""
    return (self.step - 1) // self.steps_per_epoch + 1

  @property
  def at_epoch_end(self) -> bool:
    return self.step % self.steps_per_epoch == 0

  def meta(self) -> dict:
    """The checkpoint meta at `step`: at an epoch's end its summary, else the accumulator."""
    if self.at_epoch_end:
      return {'epoch': self.epoch, 'best': self.best, 'train': self.epoch_summary['train'],
              'validation': self.epoch_summary['validation']}
    return {'epoch': self.epoch - 1, 'best': self.best,
            'epoch_steps': self.epoch_metrics.to_meta()}

  def check_nonfinite(self) -> None:
    """Raises NonFiniteLossError (or warns, train.on_nonfinite='skip') for the first
    non-finite step not synced yet; marks the accumulator synced."""
    pending = self.epoch_metrics.unsynced()
    first = self.step - len(pending)
    self.epoch_metrics.mark_synced()
    flags = jax.device_get([r['nonfinite'] for r in pending])
    bad = next((first + i + 1 for i, f in enumerate(flags) if int(f)), None)
    if bad is not None and self.config.train.on_nonfinite == 'stop':
      self.ckpt.wait()
      raise NonFiniteLossError(bad, self.workdir, self.ckpt.last_saved)
    if bad is not None:
      self.log(f'WARNING: non-finite loss at step {bad}; skipped that batch '
               f'(train.on_nonfinite="skip").')


class SaveCheckpoint:
  """Every checkpoint.every_steps, at each epoch's end with checkpoint.every_epoch, and at
  the last step."""

  def __init__(self, p: Progress):
    self.ck = p.config.checkpoint

  def due(self, p: Progress) -> bool:
    return bool((self.ck.every_steps and p.step % self.ck.every_steps == 0) or (
        p.at_epoch_end and (self.ck.every_epoch or p.step == p.total_steps)))

  def run(self, p: Progress) -> None:
    p.ckpt.save(p.state, p.meta())


class SyncMetrics:
  """The host sync: the non-finite check, the epoch's progress bar and a 'train' record of
  the steps since the last sync."""

  def __init__(self, p: Progress, checkpoint: SaveCheckpoint, progress_bars: bool):
    self.every, self.checkpoint = p.config.train.log_every_steps, checkpoint
    self.show = progress_bars and jax.process_index() == 0
    self.bar, self.t_sync = None, time.perf_counter()

  def due(self, p: Progress) -> bool:
    if self.bar is None:  # Display only: each epoch's bar appears with its first step.
      end = p.epoch * p.steps_per_epoch
      self.bar = reporting.progress(end - p.step + 1, f'epoch {p.epoch}/{p.config.train.epochs}',
                                    disable=not self.show)
    # Checkpoint steps sync first: a non-finite state is never saved.
    return p.step % self.every == 0 or p.at_epoch_end or self.checkpoint.due(p)

  def run(self, p: Progress) -> None:
    pending = p.epoch_metrics.unsynced()
    seconds, self.t_sync = time.perf_counter() - self.t_sync, time.perf_counter()
    p.check_nonfinite()
    m = p.epoch_metrics.mean(pending)
    self.bar.set_postfix(loss=f'{m["loss"]:.4f}', acc=f'{m["accuracy"]:.4f}',
                         img_s=f'{len(pending) * p.config.train.batch_size / seconds:.1f}')
    self.bar.update(len(pending))
    if p.at_epoch_end:
      self.bar.close()
      self.bar = None
    if p.writer:
      p.writer.write('train', p.step, p.epoch, m)


class EndEpoch:
  """The epoch's mean train metrics and, when due, its validation; one log line."""

  def due(self, p: Progress) -> bool:
    return p.at_epoch_end

  def run(self, p: Progress) -> None:
    tc, ck = p.config.train, p.config.checkpoint
    train_m = p.epoch_metrics.mean()
    p.epoch_metrics = EpochMetrics()
    line = f'epoch {p.epoch}/{tc.epochs}: loss {train_m["loss"]:.4f} accuracy ' \
           f'{train_m["accuracy"]:.4f}'
    if p.writer:
      p.writer.write('train_epoch', p.step, p.epoch, train_m)
    val = None
    if p.epoch % tc.eval_every_epochs == 0 or p.epoch == tc.epochs:
      res = p.setup.evaluate(p.state, 'validation')
      val = {'loss': res['loss'], 'accuracy': res['accuracy']}
      line += f' | val_loss {val["loss"]:.4f} val_accuracy {val["accuracy"]:.4f}'
      if p.writer:
        p.writer.write('validation', p.step, p.epoch, val)
    p.log(line)
    p.improved = val is not None and checkpoints.is_better(val, p.best, ck.best_metric)
    if p.improved:
      p.best = {**val, 'epoch': p.epoch, 'step': p.step, 'metric': ck.best_metric}
    p.epoch_summary = {'epoch': p.epoch, 'train': train_m, 'validation': val}


class SaveBest:
  """The best checkpoint, after a validation that improved on the best so far. Saved before
  the epoch's checkpoint: a kill between the two saves redoes the epoch, which saves it again."""

  def due(self, p: Progress) -> bool:
    return p.ckpt.best is not None and p.at_epoch_end and p.improved

  def run(self, p: Progress) -> None:
    p.ckpt.save(p.state, p.meta(), best=True)


class StopOnPreemption:
  """After a SIGTERM (`preemption.PreemptionSignal`): the step reached is checked for non-finite
  values and saved (unless just saved), then `Preempted` is raised. Every process asks once
  per step."""

  def __init__(self, signal: preemption_lib.PreemptionSignal):
    self.signal = signal

  def due(self, p: Progress) -> bool:
    return self.signal.reached(p.step)

  def run(self, p: Progress) -> None:
    if not p.at_epoch_end:
      p.check_nonfinite()
    if p.ckpt.last_saved != p.step:
      p.ckpt.save(p.state, p.meta())
    p.ckpt.wait()
    raise preemption_lib.Preempted(p.step, p.workdir)


def default_actions(p: Progress, signal: preemption_lib.PreemptionSignal, progress_bars: bool
             ) -> list:
  """The actions of a training run, in the order they run after each step."""
  checkpoint = SaveCheckpoint(p)
  return [SyncMetrics(p, checkpoint, progress_bars), EndEpoch(), SaveBest(), checkpoint,
          StopOnPreemption(signal)]
