"""inception/tools/cli.py in-process: the exit-code table, the verbose switch read before
parsing, and the one-line messages for bad --config flags. train.py's own runs as a subprocess
are in tests/test_faults_config.py (and the preemption, resume and e2e tests)."""

from __future__ import annotations

import pytest
from etils import epath

from configs import default
from inception.tools import cli
from inception.train import actions
from inception.train import checkpoints
from inception.train import preemption
from inception.train import run_record


@pytest.mark.parametrize('error,status,stderr', [
    (actions.NonFiniteLossError(4, epath.Path('w'), None), 3,
     'ERROR: Non-finite loss or gradient at step 4; training stopped'),
    (preemption.Preempted(5, epath.Path('w')), 143,
     'PREEMPTED: SIGTERM: stopped at step 5 after saving its checkpoint in w/checkpoints'),
    (cli.InvalidConfig('config.model.cut=...'), 2, 'Invalid config: config.model.cut=...'),
    (run_record.ConfigMismatchError('--config differs'), 2, 'Invalid config: --config differs'),
    (cli.ConfigFlagError('(--config=x.py): bad'), 2, 'Invalid config (--config=x.py): bad'),
    (cli.UsageError('--config is required'), 2, 'ERROR: --config is required'),
    (checkpoints.NoCheckpointError('none in w'), 1, 'ERROR: none in w'),
    (RuntimeError('in use'), 1, 'ERROR: in use'),
    (FileNotFoundError('w/run.json not found'), 1, 'ERROR: w/run.json not found'),
    (PermissionError('denied'), 1, 'ERROR: denied'),
    (ValueError('bad'), 1, 'ERROR: bad'),
])
def test_exit_status_and_message_per_error(error, status, stderr, capsys):
  def run():
    raise error
  assert cli.exit_status(run) == status
  err = capsys.readouterr().err
  assert err.startswith(stderr) and err.endswith('\n') and err.count('\n') == 1, err


def test_a_finished_run_exits_0_and_an_unnamed_error_propagates(capsys):
  assert cli.exit_status(lambda: None) == 0
  with pytest.raises(KeyError):
    cli.exit_status(lambda: {}['x'])
  assert capsys.readouterr().err == ''
  assert preemption.EXIT_PREEMPTED == 143


def test_config_errors_become_invalid_config():
  with pytest.raises(cli.InvalidConfig, match='^bad value$'):
    with cli.config_errors('c.py'):
      raise ValueError('bad value')
  with pytest.raises(cli.InvalidConfig, match='^--config=c.py:arg: Failed loading c.py$'):
    with cli.config_errors('c.py:arg'):
      raise OSError('Failed loading\n  c.py')


@pytest.mark.parametrize('argv,verbose', [
    ([], False), (['--verbose'], True), (['--verbose=true'], True), (['--verbose=1'], True),
    (['--noverbose'], False), (['--verbose', '--noverbose'], False), (['--verbose=maybe'], False),
    (['--config', 'configs/smoke.py', '--config.train.epochs=3', '--verbose', 'extra'], True),
])
def test_verbose_is_read_from_argv_before_parsing(argv, verbose, monkeypatch):
  monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
  assert cli.is_verbose_in(['train.py', *argv]) is verbose
  monkeypatch.setenv(cli.VERBOSE_ENV, '1')
  assert cli.is_verbose_in(['train.py', *argv]) and cli.is_verbose(False)


def test_config_flag_error_messages():
  argv = ['train.py', '--config=configs/smoke.py', '--config.train.epoch=3', '--workdir=w']
  e = cli.config_flag_error(KeyError('epoch'), argv, default.get_config)
  assert str(e).startswith("(--config=configs/smoke.py --config.train.epoch=3): no such key "
                           "'epoch' (did you mean 'epochs'?); valid keys in config.train: ")
  traceback = ValueError('flag --config=c.py: Error\nTraceback (most recent call last):\n'
                         '  File "c.py"\nValueError: Unknown config arg')
  e = cli.config_flag_error(traceback, ['train.py', '--config=c.py'], default.get_config)
  assert str(e) == '(--config=c.py): flag --config=c.py: Error ValueError: Unknown config arg'
