"""The resume gate: a rerun continues a run only with that run's config and data.

Process 0 reads `<workdir>/run.json` (`run_record`) and compares; every process then raises
or goes on together (`sharding.on_main_agreed`), so none waits in a collective the others
left.
"""

from __future__ import annotations

from typing import Any, Callable

import ml_collections
from etils import epath

from inception.train import run_record
from inception.train import sharding


def run_to_resume(config: ml_collections.ConfigDict, workdir: epath.Path,
                  log: Callable[[str], None]) -> run_record.RunRecord | None:
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
  return sharding.on_main_agreed(check, ValueError, run_record.ConfigMismatchError(
      f'Process 0 refused to resume the run in {workdir}; its message says why.'))


def check_data(record: run_record.RunRecord | None, info: Any, workdir: epath.Path) -> None:
  """Raises ConfigMismatchError in every process when the prepared data (`info`) is not the
  data the resumed run (`record`; None: a new run, nothing to check) trained on."""
  sharding.on_main_agreed(lambda: record and run_record.check_resume_data(record, info),
                          run_record.ConfigMismatchError, run_record.ConfigMismatchError(
                              f'Process 0 refused to resume the run in {workdir} on this '
                              'data; its message says why.'))
