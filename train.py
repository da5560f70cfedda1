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
and absl's flags are process-wide state. Start-up, per-process logging and exit codes:
inception/tools/cli.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from inception.tools import cli

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


def main(argv) -> int:
  """The exit status (`cli.exit_codes`) of the --mode asked for."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore at INFO
  return cli.exit_status(_run)


def _run() -> None:
  cli.start_jax(cli.is_verbose(FLAGS.verbose), FLAGS.multihost, FLAGS.coordinator_address,
                FLAGS.num_processes, FLAGS.process_id, FLAGS.heartbeat_timeout)
  from configs import validate  # pylint: disable=g-import-not-at-top
  from inception import paths  # pylint: disable=g-import-not-at-top
  config, mode = FLAGS.config, FLAGS.mode
  config_arg = None if config is None else config_flags.get_config_filename(FLAGS['config'])
  if config is None and (mode == 'train' or not FLAGS.workdir):
    what = ('--config is required to train' if mode == 'train' else
            f'--workdir is required for --mode={mode} (the trained run to use)')
    raise cli.UsageError(f'{what}; see python train.py --helpfull')
  workdir = (paths.as_path(FLAGS.workdir) if FLAGS.workdir  # A local folder or a URI (gs://).
             else default_workdir(config_arg))
  with cli.config_errors(config_arg):
    if mode == 'train':
      validate.validate(config, workdir=workdir)
    elif config is not None:
      validate.validate_eval(config)
  log = cli.process_log()
  common = dict(checkpoint=FLAGS.checkpoint, config=config, log=log)
  # pylint: disable=g-import-not-at-top
  if mode == 'train':
    from inception.train import trainer
    trainer.train(config, workdir, progress_bars=FLAGS.progress, log=log)
  elif mode == 'eval':
    from inception.tools import evaluate
    evaluate.evaluate(workdir, split=FLAGS.split, eval_dir=FLAGS.eval_dir,
                      data_root=FLAGS.data_root, tta=FLAGS.tta, **common)
  elif mode == 'predict':
    from inception.tools import predict
    predict.predict(workdir, FLAGS.inputs, output=FLAGS.output, tta=FLAGS.tta, **common)
  elif mode == 'calibrate':
    from inception.tools import calibrate
    calibrate.calibrate(workdir, tta=FLAGS.tta, **common)
  else:
    from inception.tools import export
    export.export(workdir, formats=FLAGS.format, export_dir=FLAGS.export_dir, **common)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, after importing the libraries (a config file imports TensorFlow),
  quietly unless --verbose or INCEPTION_FLAX_VERBOSE=1 (JAX's backends start in `main`, after
  joining a multi-process job). A bad --config (config arg, misspelt key, wrong type) exits 2
  with one line, like an invalid config value."""
  cli.import_libraries(cli.is_verbose_in(argv))
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    from configs import default  # pylint: disable=g-import-not-at-top
    sys.exit(cli.report(cli.config_flag_error(e, argv, default.get_config)))


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
