"""Train with a config; evaluate or predict with a trained run's workdir alone.

    python train.py --config configs/dog_horse.py                 # train (resumes if rerun)
    python train.py --config configs/dog_horse.py --config.optimizer.lr=3e-4
    python train.py --config configs/ablations.py:cut=mixed6,preprocess=inception
    python train.py --workdir W --mode=eval --checkpoint=best --split=test [--tta=flip]
    python train.py --workdir W --mode=eval --eval_dir=/path/<class>/...
    python train.py --workdir W --mode=predict --inputs=a.jpg,photos/ --output=preds.csv

Training's default --workdir: workdirs/<config file stem>[_<config arg slug>], so rerunning the
same command resumes the same run. Eval and predict rebuild the run from <workdir>/run.json
(inception/train/run_record.py); a --config there may change only the eval keys
(run_record.EVAL_OVERRIDABLE, e.g. --config.eval.batch_size) and must otherwise equal the run's.

This entry point uses absl flags because ml_collections' config flags (`--config.x.y=...`) are
absl flags. The module CLIs (`python -m inception.weights`, `inception.tools.*`,
`data.restructure`) use argparse: their `main(argv)` is called in-process by tests and tools,
and absl's flags are process-wide state.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import tempfile
from pathlib import Path

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Config file, optionally `path.py:k=v,k=v`. '
                                'Required to train; eval/predict read the run\'s own.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory, a local path or a URI such as gs://b/run '
                    '(default: workdirs/<config stem>[_<arg>]). Required for eval/predict '
                    'without --config.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'calibrate', 'export'],
                  'What to do.')
flags.DEFINE_string('checkpoint', 'latest', 'eval/predict/calibrate/export: latest | best | STEP.')
flags.DEFINE_enum('split', 'validation', ['validation', 'test'], 'eval: the split.')
flags.DEFINE_string('eval_dir', None, 'eval: a class-folder tree to evaluate instead.')
flags.DEFINE_string('data_root', None, 'eval --split: the run\'s restructured subset if it was '
                    'moved (its files are checked against the recorded sha256).')
flags.DEFINE_enum('tta', None, ['none', 'flip'], 'eval/predict: test-time augmentation '
                  '(default: the run\'s eval.tta); flip = mean of each image\'s and its '
                  'mirror\'s probabilities.')
flags.DEFINE_list('inputs', [], 'predict: image files and/or folders.')
flags.DEFINE_string('output', None, 'predict: CSV file for the predictions.')
flags.DEFINE_list('format', ['savedmodel', 'onnx'], 'export: artefacts to write, any of '
                  'savedmodel, onnx, tflite.')
flags.DEFINE_string('export_dir', None, 'export: output folder (default: '
                    '<workdir>/export/<checkpoint>_step<S>).')
flags.DEFINE_bool('multihost', False, 'Multi-process job: call jax.distributed.initialize(), '
                  'auto-detecting what the flags below leave unset (TPU pods, Slurm, MPI).')
flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0\'s '
                    'coordination service (the same in every process). Implies --multihost.')
flags.DEFINE_integer('num_processes', None, 'Multi-process: processes in the job.', lower_bound=1)
flags.DEFINE_integer('process_id', None, 'Multi-process: this process\'s index, 0 .. '
                     'num_processes-1 (0 writes metrics, summaries and the record).',
                     lower_bound=0)
flags.DEFINE_integer('heartbeat_timeout', 60, 'Multi-process: seconds after which a silent '
                     '(dead) process ends the job in every other process.', lower_bound=1)
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.DEFINE_bool('verbose', False, 'Show the libraries\' start-up logs (TensorFlow/XLA notices '
                  'such as "failed call to cuInit" on a machine without a GPU). Also: '
                  'INCEPTION_FLAX_VERBOSE=1.')
FLAGS = flags.FLAGS


def default_workdir(config_flag: str) -> Path:
  """workdirs/<stem>[_<slug of the config arg>] for `path.py[:arg]`."""
  from configs import common  # pylint: disable=g-import-not-at-top
  path, _, arg = config_flag.partition(':')
  slug = common.arg_slug(arg)
  return Path('workdirs') / (Path(path).stem + (f'_{slug}' if slug else ''))


@contextlib.contextmanager
def _native_logs_held_back(verbose: bool):
  """Holds back what native code writes to stderr while TensorFlow and JAX start (CUDA probes
  on CPU-only machines, CPU-instruction notices): none of it is an error here. Replayed when
  starting fails, or at once with `verbose`."""
  if verbose:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    except Exception:
      os.dup2(saved, 2)
      held.seek(0)
      sys.stderr.write(held.read().decode(errors='replace'))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def _verbose(argv: list[str]) -> bool:
  return (any(a in ('--verbose', '--verbose=true', '--verbose=True') for a in argv)
          or bool(os.environ.get('INCEPTION_FLAX_VERBOSE')))


def _import_libraries(verbose: bool) -> None:
  """Imports TensorFlow (via `data`) and JAX, quietly unless `verbose`."""
  if not verbose:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  with _native_logs_held_back(verbose):
    import data  # pylint: disable=g-import-not-at-top,unused-import
    import jax  # pylint: disable=g-import-not-at-top,unused-import
    if not verbose:
      # "Unable to initialize backend 'tpu'" and the like: JAX trying platforms this machine
      # does not have.
      import logging as py_logging  # pylint: disable=g-import-not-at-top
      py_logging.getLogger('jax._src.xla_bridge').setLevel(py_logging.ERROR)


def _start_jax(verbose: bool) -> None:
  """Joins the multi-process job when asked (that must come first), then starts JAX's
  backends, quietly unless `verbose`."""
  import jax  # pylint: disable=g-import-not-at-top
  distributed = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.multihost or any(v is not None for v in distributed):
    from inception.train import sharding  # pylint: disable=g-import-not-at-top
    sharding.initialize_multihost(*distributed, heartbeat_timeout_s=FLAGS.heartbeat_timeout)
  with _native_logs_held_back(verbose):
    jax.devices()


def _process_log():
  """print in process 0; elsewhere only warnings, prefixed with the process index (N copies
  of every line would bury them)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    return print
  prefix = f'[process {jax.process_index()}/{jax.process_count()}] '

  def log(line: str) -> None:
    if line.lstrip().startswith(('WARNING', 'ERROR')):
      print(prefix + line)
  return log


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore at INFO
  try:
    _start_jax(_verbose(sys.argv))
  except (ValueError, TypeError) as e:  # jax.distributed.initialize's "should be defined" etc.
    print(f'ERROR: multi-process start-up (--coordinator_address, --num_processes, '
          f'--process_id): {e}', file=sys.stderr)
    return 2
  from configs import validate  # pylint: disable=g-import-not-at-top
  from inception.train import actions  # pylint: disable=g-import-not-at-top
  from inception.train import checkpoints  # pylint: disable=g-import-not-at-top
  from inception.train import preemption  # pylint: disable=g-import-not-at-top
  from inception.train import run_record  # pylint: disable=g-import-not-at-top
  from inception.train import trainer  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  raw_flag = None
  if config is not None:
    config_arg = config_flags.get_config_filename(FLAGS['config'])
    raw_flag = next((a.split('=', 1)[1] for a in sys.argv if a.startswith('--config=')),
                    config_arg)
  if FLAGS.workdir:
    from inception import paths  # pylint: disable=g-import-not-at-top
    workdir = paths.as_path(FLAGS.workdir)  # A local folder or a URI (gs://bucket/run).
  elif raw_flag:
    workdir = default_workdir(raw_flag)
  else:
    what = ('--config is required to train' if FLAGS.mode == 'train' else
            f'--workdir is required for --mode={FLAGS.mode} (the trained run to use)')
    print(f'ERROR: {what}; see python train.py --helpfull', file=sys.stderr)
    return 2
  try:
    if FLAGS.mode == 'train':
      if config is None:
        print('ERROR: --config is required to train', file=sys.stderr)
        return 2
      validate.validate(config, workdir=workdir)
    elif config is not None:
      validate.validate_eval(config)
  except ValueError as e:
    print(f'Invalid config: {e}', file=sys.stderr)
    return 2
  except OSError as e:  # config_flags raises a config file's load failure on first use.
    print(f'Invalid config: --config={raw_flag}: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  log = _process_log()
  try:
    if FLAGS.mode == 'train':
      trainer.train(config, workdir, progress_bars=FLAGS.progress, log=log)
    elif FLAGS.mode == 'eval':
      from inception.tools import evaluate  # pylint: disable=g-import-not-at-top
      evaluate.evaluate(workdir, checkpoint=FLAGS.checkpoint, split=FLAGS.split,
                        eval_dir=FLAGS.eval_dir, data_root=FLAGS.data_root, config=config,
                        tta=FLAGS.tta, log=log)
    elif FLAGS.mode == 'predict':
      from inception.tools import predict  # pylint: disable=g-import-not-at-top
      predict.predict(workdir, FLAGS.inputs, checkpoint=FLAGS.checkpoint,
                      output=FLAGS.output, config=config, tta=FLAGS.tta, log=log)
    elif FLAGS.mode == 'calibrate':
      from inception.tools import calibrate  # pylint: disable=g-import-not-at-top
      calibrate.calibrate(workdir, checkpoint=FLAGS.checkpoint, config=config, tta=FLAGS.tta,
                          log=log)
    else:
      from inception.tools import export  # pylint: disable=g-import-not-at-top
      export.export(workdir, checkpoint=FLAGS.checkpoint, formats=FLAGS.format,
                    export_dir=FLAGS.export_dir, config=config, log=log)
  except actions.NonFiniteLossError as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 3
  except preemption.Preempted as e:
    print(f'PREEMPTED: {e}', file=sys.stderr)
    return preemption.EXIT_PREEMPTED
  except run_record.ConfigMismatchError as e:
    print(f'Invalid config: {e}', file=sys.stderr)
    return 2
  except (checkpoints.NoCheckpointError, RuntimeError, FileNotFoundError, PermissionError,
          ValueError) as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  return 0


def _unknown_key_message(error: Exception, argv: list[str]) -> str:
  """'no such key ...' for the first --config.<path>=... override that names no key of
  configs/default.py, with the valid keys of its section; else the error's own text."""
  from configs import default  # pylint: disable=g-import-not-at-top
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0].split('.')
    section = default.get_config()
    for depth, part in enumerate(path):
      if not isinstance(section, ml_collections.ConfigDict):
        break
      if part not in section:
        keys = sorted(section.keys())
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        return (f'no such key {part!r}{hint}; valid keys in '
                f'{".".join(["config", *path[:depth]])}: {", ".join(keys)}')
      section = section[part]
  return str(error).strip()


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad --config (bad config arg, misspelt key, wrong type) exits
  with code 2 and one message, like an invalid config value. Imports the libraries first (a
  config file imports TensorFlow), quietly unless --verbose or INCEPTION_FLAX_VERBOSE=1; JAX's
  backends start in `main`, after joining a multi-process job."""
  _import_libraries(_verbose(argv))
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    if isinstance(e, (KeyError, AttributeError)):  # ConfigDict's "'key'\nDid you mean ..."
      lines = [_unknown_key_message(e, argv)]
    else:
      lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
      if any(l.startswith('Traceback') for l in lines):
        lines = lines[:1] + lines[-1:]  # The flag, and the error the config file raised.
    given = ' '.join(a for a in argv[1:] if a.startswith('--config'))
    print(f'Invalid config ({given}): {" ".join(lines)}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
