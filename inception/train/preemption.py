"""SIGTERM as a request to stop at the next step, with that step's checkpoint written.

Single process: `PreemptionSignal` installs its own SIGTERM handler while the loop runs. Several
processes: JAX's preemption sync manager (started by `jax.distributed.initialize`) owns SIGTERM
and decides the step at which every process stops.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

import jax
from etils import epath

# train.py's exit status after a SIGTERM was honoured (128 + SIGTERM, as a shell reports a
# process ended by it): the checkpoint of the step reached is written; rerun to resume.
EXIT_PREEMPTED = 128 + signal.SIGTERM


class Preempted(RuntimeError):
  """Training stopped on SIGTERM after writing the checkpoint of the step it had reached."""

  def __init__(self, step: int, workdir: epath.Path):
    self.step = step
    super().__init__(f'SIGTERM: stopped at step {step} after saving its checkpoint in '
                     f'{workdir / "checkpoints"}; rerun the same command to resume from it.')


class PreemptionSignal:
  """While active, a SIGTERM asks the loop to save the step reached and stop.

  One process: the first SIGTERM sets `requested`; the default action is restored at once, so
  a second SIGTERM ends the process right away (the checkpoints committed before are
  untouched: orbax commits by renaming a finished folder). Several processes: a notice to any
  process reaches all of them, and `reached(step)`, called by every process once per step,
  turns True in all of them at the same step. Off the main thread (one process): inert.
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
    """Whether to stop at `step` (every process calls it once per step, in order)."""
    if self._multiprocess and not self.requested:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        self.requested = True
        self._log(f'SIGTERM received by the job: every process saves step {step}, then exits '
                  f'(exit status {EXIT_PREEMPTED}).')
    return self.requested

  def __enter__(self) -> 'PreemptionSignal':
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
