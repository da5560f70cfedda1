"""Evaluate a trained run's checkpoint on its recorded validation or test split, or on any
class-folder tree, from its workdir alone.

The run is rebuilt from `<workdir>/run.json` (`inception.train.run_record`): config, class names,
preprocessing, image size, model. The model ({'params', 'batch_stats'}, backbone included) comes
from `<workdir>/checkpoints` ('latest' or a step) or `<workdir>/best` ('best'); no weights file
is read and no data set is prepared, found or downloaded. A split is read from exactly the files
the run's manifest lists, each checked against its recorded sha256.

A run trained with `train.ema_decay` is evaluated with its EMA parameters, as its training
evaluated them. `eval.tta='flip'` (may be given at evaluation) averages each image's and its
mirror image's class probabilities.

Each evaluation writes `<workdir>/eval/<what>_<checkpoint>[_step<S>][_tta-flip].json` (+
confusion matrix) with full-precision metrics, and ends its output with the line
`<what> @ step S (<checkpoint>): accuracy A loss L (n=N)` (`(n=N, tta=flip)` with TTA).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from etils import epath

import data
from data import restructure
from inception import checks
from inception import paths
from inception.train import calibration
from inception.train import metrics as metrics_lib
from inception.train import reporting
from inception.train import restore as restore_lib
from inception.train import run_record
from inception.train import sharding
from inception.train import steps as steps_lib
from inception import transfer

FORMAT = 1  # Of the eval JSON.


@dataclasses.dataclass(frozen=True)
class Restored:
  """A trained run ready for inference: its record, config, model and checkpointed variables.

  variables: {'params', 'batch_stats'} replicated over `mesh`; meta: the checkpoint's JSON meta
  (step, epoch, metrics); batch_size: eval.batch_size rounded up to a multiple of the device
  count (padding is masked, so metrics do not depend on it); temperature: the temperature
  scaling to apply (`calibration`: its calibration.json entry), None when there is none.
  """
  record: run_record.RunRecord
  config: ml_collections.ConfigDict
  model: transfer.TransferModel
  variables: dict
  meta: dict
  mesh: Any
  checkpoint: str
  batch_size: int
  temperature: float | None = None
  calibration: dict | None = None
  workdir: str | None = None


def validate_overrides(config: ml_collections.ConfigDict) -> None:
  """Checks the values of the keys eval and predict may change (run_record.EVAL_OVERRIDABLE)."""
  checks.number('eval.batch_size', config.eval.batch_size, lo=1, integer=True)
  checks.number('data.num_parallel_calls', config.data.num_parallel_calls, lo=-1, integer=True)
  if config.data.num_parallel_calls == 0:
    raise ValueError('config.data.num_parallel_calls=0 is not valid; use -1 (AUTOTUNE) or >= 1')
  checks.number('data.prefetch', config.data.prefetch, lo=-1, integer=True)
  checks.boolean('data.deterministic', config.data.deterministic)
  steps_lib.check_tta(config.eval.tta)


def restore(workdir: str | os.PathLike, checkpoint: str = 'latest', *,
            config: ml_collections.ConfigDict | None = None, tta: str | None = None,
            calibrated: bool = True, log: Callable[[str], None] = print) -> Restored:
  """The run in `workdir` with `checkpoint` = 'latest' | 'best' | a step number restored.

  config: optional --config; only `run_record.EVAL_OVERRIDABLE` keys may differ from the run's.
  tta: eval.tta for this evaluation (e.g. train.py's --tta), over the run's and `config`'s.
  calibrated: apply the temperature `--mode=calibrate` fitted for this checkpoint's step and
    test-time augmentation (`inception.train.calibration`), when there is one; False: never.
  Raises FileNotFoundError (no run record), ValueError (a refused config key) or
  NoCheckpointError (with the directory and what exists).
  """
  workdir = paths.as_path(workdir)
  record = run_record.load(workdir)
  config = run_record.merge(record, config)
  if tta is not None:
    steps_lib.check_tta(tta)
    config.eval.tta = tta
  if record.is_synthetic:
    log(record.data['banner'])
  if record.init_from:
    f = record.init_from
    log(f'The run was warm-started from {f["workdir"]} ({f["checkpoint"]}, step {f["step"]}; '
        f'run.json sha256 {f["record_sha256"][:12]}).')
  mesh = sharding.make_mesh()
  model, variables, meta = restore_lib.model_variables(workdir, record, config, checkpoint, mesh,
                                                       log)
  devices = mesh.devices.size
  batch_size = -(-config.eval.batch_size // devices) * devices
  if batch_size != config.eval.batch_size:
    log(f'eval.batch_size {config.eval.batch_size} -> {batch_size}: a multiple of the '
        f'{devices} devices (padding is masked out)')
  entry = _calibration_of(workdir, int(meta['step']), tta_of(config), log) if calibrated \
      else None
  return Restored(record, config, model, variables, meta, mesh, checkpoint, batch_size,
                  temperature=None if entry is None else float(entry['temperature']),
                  calibration=entry, workdir=os.fspath(paths.absolute(workdir)))


def _calibration_of(workdir: epath.Path, step: int, tta: str, log) -> dict | None:
  """The calibration entry for (step, tta), said in the log; a note when the run has
  temperatures, but none for this checkpoint."""
  entry = calibration.lookup(workdir, step, tta)
  if entry is not None:
    log(f'Temperature scaling: T={entry["temperature"]:.6g} (fitted on {entry["split"]} for '
        f'step {step}, tta={tta}, by --mode=calibrate): probabilities use logits / T.')
    return entry
  others = [(e['step'], e['tta']) for e in calibration.load(workdir)]
  if others:
    log(f'NOTE: {workdir / calibration.FILE} has temperatures for (step, tta) {others}, none '
        f'for step {step} with tta={tta}: probabilities are not temperature-scaled (run '
        f'--mode=calibrate with this checkpoint and --tta to fit one).')
  return None


def _digest(rows) -> str:
  return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _folder_files(eval_dir: Path, class_names) -> tuple[list[tuple[str, int]], dict]:
  """[(file, label)] of `<eval_dir>/<class>/*` and the folder's identity (files and sha256)."""
  missing = [c for c in class_names if not (eval_dir / c).is_dir()]
  if missing:
    raise FileNotFoundError(f'--eval_dir {eval_dir} must hold one folder per class of the run '
                            f'{list(class_names)}; missing: {missing}')
  files = [(str(f), label) for label, name in enumerate(class_names)
           for f in data.list_images(eval_dir / name)]
  rows = [[str(Path(f).relative_to(eval_dir)), paths.file_digest(f)] for f, _ in files]
  return files, {'kind': 'folder', 'path': str(eval_dir.absolute()), 'files_sha256': _digest(rows),
                 'num_files': len(rows)}


def _folder_batches(files, config_data, batch_size: int, log):
  """Batches of the class-folder files, labelled (mask marks real, readable examples)."""
  label_of = dict(files)
  for batch in data.folder_batches([f for f, _ in files], config_data, batch_size=batch_size,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count(), log=log):
    labels = [label_of.get(p, 0) for p in batch.pop('path')]
    del batch['index']
    yield {**batch, 'label': np.asarray(labels, np.int32)}


def tta_of(config: ml_collections.ConfigDict) -> str:
  """config.eval.tta ('none' for runs recorded before the key existed)."""
  return config.eval.get('tta', 'none')


def _output_stem(workdir: epath.Path, what: str, checkpoint: str, step: int, tta: str
                 ) -> epath.Path:
  label = f'{checkpoint}_step{step}' if checkpoint in ('latest', 'best') else f'step{step}'
  return workdir / 'eval' / (f'{what}_{label}' + ('' if tta == 'none' else f'_tta-{tta}'))


def data_batches(r: Restored, *, split: str = 'validation', eval_dir: str | None = None,
                 data_root: str | None = None, log: Callable[[str], None] = print
                 ) -> tuple[Any, str, str, dict]:
  """(batches, what, output name, the data's identity) of the run's recorded `split` (its
  manifest's files, sha256-checked, under the recorded root or `data_root`) or of a
  class-folder tree `eval_dir`. Batches: {'image', 'label', 'mask'}, this process's share."""
  if eval_dir:
    paths.require_local(eval_dir, '--eval_dir', 'images are listed and read in place')
    root = Path(eval_dir)
    files, identity = _folder_files(root, r.record.class_names)
    slug = re.sub(r'[^A-Za-z0-9._-]+', '_', root.absolute().name) or 'root'
    return (_folder_batches(files, r.config.data, r.batch_size, log), f'folder {root}',
            f'folder-{slug}-{identity["files_sha256"][:8]}', identity)
  root = Path(data_root) if data_root else Path(r.record.data['root'])
  manifest = r.record.manifest()
  if not manifest['splits'].get(split):
    raise ValueError(f'--split={split!r} has no examples in the run\'s data '
                     f'({r.record.data["num_examples"]}); use validation or test')
  image_paths, labels = restructure.verified_split(root, manifest, split)
  identity = {'kind': 'split', 'split': split, 'root': str(root),
              'manifest_sha256': r.record.data['manifest_sha256'],
              'files_sha256': _digest([[e['path'], e.get('stored_sha256', e['sha256'])]
                                       for e in manifest['splits'][split]]),
              'num_files': len(image_paths), 'description': r.record.data['description']}
  batches = data.file_batches(image_paths, labels, r.config.data, batch_size=r.batch_size,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
  return batches, split, split, identity


def evaluate(workdir: str | os.PathLike, *, checkpoint: str = 'latest', split: str = 'validation',
             eval_dir: str | None = None, data_root: str | None = None,
             config: ml_collections.ConfigDict | None = None, tta: str | None = None,
             log: Callable[[str], None] = print) -> dict:
  """Loss, accuracy, the metrics a paper reports and the confusion matrix of a checkpoint on
  `split` or `eval_dir`.

  split: 'validation' | 'test', the files the run's manifest lists (checked by sha256) under
    the recorded subset root, or under `data_root` when the subset was moved.
  eval_dir: instead, a class-folder tree `<eval_dir>/<class name>/*` with the run's classes.
  config, tta: optional --config and --tta (see `restore`).
  With a temperature fitted for the checkpoint (`--mode=calibrate`), the headline figures and
  'metrics' are the temperature-scaled ones; 'calibration' holds T and NLL, ECE and Brier score
  before and after.
  Returns the dict written to the eval JSON.
  Raises FileNotFoundError / ValueError naming a missing or changed file.
  """
  workdir = paths.as_path(workdir)
  r = restore(workdir, checkpoint, config=config, tta=tta, log=log)
  repl, dsh = sharding.replicated(r.mesh), sharding.data_sharded(r.mesh)
  batches, what, name, identity = data_batches(r, split=split, eval_dir=eval_dir,
                                               data_root=data_root, log=log)
  tta = tta_of(r.config)
  names = list(r.record.class_names)
  eval_step = steps_lib.make_eval_step(r.model, len(names), tta=tta, temperature=r.temperature,
                                       replicated=repl, batch_sharding=dsh)
  raw = steps_lib.evaluate_batches(eval_step, r.variables, batches, r.mesh)
  res = raw.get('calibrated', raw)
  report = metrics_lib.report(res['sums'], names)
  calib = None
  if r.temperature is not None:
    calib = {'temperature': r.temperature, 'fitted': r.calibration,
             'before': {'loss': raw['loss'], 'accuracy': raw['accuracy'],
                        **metrics_lib.headline(metrics_lib.report(raw['sums'], names))},
             'after': {'loss': res['loss'], 'accuracy': res['accuracy'],
                       **metrics_lib.headline(report)}}
  step = int(r.meta['step'])
  out = {'format': FORMAT, 'what': what, 'checkpoint': checkpoint, 'step': step,
         'epoch': r.meta.get('epoch'), 'loss': res['loss'], 'accuracy': res['accuracy'],
         **metrics_lib.headline(report), 'count': res['count'], 'class_names': names,
         'metrics': report, 'temperature': r.temperature, 'calibration': calib,
         'confusion': res['confusion'].tolist(), 'data': identity,
         'trained_on_synthetic_data': r.record.is_synthetic, 'init_from': r.record.init_from,
         'workdir': os.fspath(paths.absolute(workdir)),
         'eval_batch_size': r.batch_size, 'tta': tta}
  if jax.process_index() == 0:
    stem = _output_stem(workdir, name, checkpoint, step, tta)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if paths.as_path(f'{stem}.json').exists():
      log(f'Replacing {stem}.json: the same evaluation (same data, checkpoint and step) again.')
    reporting.save_confusion(res['confusion'], names, f'{stem}_confusion')
    reporting.save_reliability(report, f'{stem}_reliability')
    reporting.write_json(f'{stem}.json', out)
    log(f'Wrote {stem}.json (+ _confusion and _reliability .png)')
  if r.record.is_synthetic:
    log(r.record.data['banner'])
  log(metrics_lib.format_report(report))
  if calib is not None:
    b, a = calib['before'], calib['after']
    log(f'temperature scaling T={r.temperature:.6g}: nll {b["nll"]:.4f} -> {a["nll"]:.4f}, '
        f'ece {b["ece"]:.4f} -> {a["ece"]:.4f}, accuracy {b["accuracy"]:.4f} -> '
        f'{a["accuracy"]:.4f}')
  extra = ('' if tta == 'none' else f', tta={tta}') + \
      ('' if r.temperature is None else f', temperature={r.temperature:.6g}')
  log(f'{what} @ step {step} ({checkpoint}): accuracy {res["accuracy"]!r} '
      f'loss {res["loss"]!r} (n={res["count"]}{extra})')
  return out
