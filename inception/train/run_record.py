"""The record a training run leaves in its workdir; evaluation and prediction rebuild the run
from it alone, and a rerun resumes it only as that run (`check_resume`, `check_resume_data`).

    <workdir>/run.json            format, the full config (overrides included), class names,
                                  data identity, backbone weights' provenance
    <workdir>/data_manifest.json  byte copy of the restructuring manifest of the run's data
                                  (every file of every split with its sha256; its own sha256 is
                                  run.json's data.manifest_sha256)

run.json (format 1):
    format          1
    config          the run's config as JSON (tuples as lists)
    class_names     label i = class_names[i]
    data            data.DatasetInfo.to_json(): kind, root (the restructured subset), description,
                    is_synthetic, banner, manifest_sha256, num_examples
    weights         provenance: weights (name or path), source, sha256, variant (the backbone's
                    build keywords, e.g. {'mixed10_pool': 'max'})
    init_from       only after a warm start (model.init_from): the source run's workdir,
                    checkpoint, step, the sha256 of its run.json, the subtrees copied
    xla_options     the XLA options process 0 compiled with (`xla_options.Choice.to_json()`):
                    platform, candidate name, options, CPU kind and model, measured or not;
                    rewritten by each start, so it names the host of the latest start

The checkpoints hold every parameter (the backbone too), so with this record a copied workdir
evaluates and predicts with no weights file and no data set. A key the project has since
removed (`RETIRED`) is dropped from the recorded config when it is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import ml_collections
from etils import epath

from inception import paths

FORMAT = 1
RECORD = 'run.json'
MANIFEST = 'data_manifest.json'
# Config keys that evaluation and prediction may change: how batches are formed and fed, never
# the model, its input or its data. Any other difference from the record is refused.
EVAL_OVERRIDABLE = ('eval.batch_size', 'eval.tta', 'data.num_parallel_calls', 'data.prefetch',
                    'data.deterministic')


# Config keys a resumed training run may change: they decide how long it runs, how it saves
# and how batches are fed, never the values of a step (train.feature_cache serves the features
# the backbone computes, tests/test_feature_cache.py; eval.tta is used by eval and predict
# only). Not here: train.feature_cache_dtype and data.deterministic, which can change the
# inputs or their order. Any other difference from the record is refused.
RESUME_CHANGEABLE = ('train.epochs', 'train.on_nonfinite', 'train.prefetch_to_device',
                     'train.feature_cache', 'checkpoint.every_steps', 'checkpoint.keep',
                     'checkpoint.async_save', 'eval.batch_size', 'eval.tta',
                     'data.num_parallel_calls', 'data.prefetch')

# Config keys the project no longer has: knobs that had one value left, whose behaviour is now
# fixed (train.loss: 'auto', the loss follows the number of classes). Records of earlier runs
# hold them; `load` drops them, so those runs still evaluate, predict and resume.
RETIRED = ('train.loss',)


class ConfigMismatchError(ValueError):
  """A --config (eval, predict, or a resumed training run) differs from the run's own in a key
  it may not change, or a resumed run's data is not the data it trained on."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """A trained run as recorded in its workdir (see the module doc)."""
  workdir: epath.Path
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]
  data: dict
  weights: dict
  init_from: dict | None = None  # The warm start's lineage (`warm_start`), if it had one.
  xla_options: dict | None = None  # The latest start's `xla_options.Choice`, if recorded.

  @property
  def is_synthetic(self) -> bool:
    return bool(self.data['is_synthetic'])

  def manifest(self) -> dict:
    """The run's data manifest, checked against the sha256 the record holds."""
    path = self.workdir / MANIFEST
    try:
      blob = path.read_bytes()
    except OSError as e:
      raise FileNotFoundError(f'{path} cannot be read ({e.strerror}): the workdir is incomplete;'
                              f' copy the whole workdir, {MANIFEST} included') from None
    if hashlib.sha256(blob).hexdigest() != self.data['manifest_sha256']:
      raise ValueError(f'{path} is not the manifest the run trained on (its sha256 differs from '
                       f'data.manifest_sha256 in {self.workdir / RECORD}); restore it from the '
                       'original workdir')
    return json.loads(blob)


def _tuples(value: Any) -> Any:
  """JSON arrays back to the tuples the configs use (lists nested in tuples too)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def config_from_json(obj: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_tuples(obj))


def _without_retired(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` without the `RETIRED` keys it holds (removed in place)."""
  for key in RETIRED:
    *sections, name = key.split('.')
    node = config
    for section in sections:
      node = node.get(section, {})
    if name in node:
      del node[name]
  return config


def write(workdir: str | os.PathLike, config: ml_collections.ConfigDict, info: Any,
          weights: dict, init_from: dict | None = None,
          xla_options: dict | None = None) -> None:
  """Writes run.json and data_manifest.json (atomically) for a run on `info`'s data.

  init_from: the lineage of a warm start (`warm_start.initialize`): source workdir,
  checkpoint, step and its run.json's sha256. xla_options: `xla_options.Choice.to_json()`.

  Raises:
    RuntimeError: the data set's manifest changed while the run started (its sha256 is no
      longer the one `info` was prepared with).
  """
  workdir = paths.as_path(workdir)
  src = paths.as_path(info.root) / 'manifest.json'
  blob = src.read_bytes()
  if hashlib.sha256(blob).hexdigest() != info.manifest_sha256:
    raise RuntimeError(f'{src} changed since the data was prepared for this run; another '
                       'process restructured it: rerun')
  paths.write_bytes(workdir / MANIFEST, blob)
  record = {'format': FORMAT, 'config': json.loads(config.to_json_best_effort()),
            'class_names': list(info.class_names), 'data': info.to_json(), 'weights': weights}
  if init_from is not None:
    record['init_from'] = init_from
  if xla_options is not None:
    record['xla_options'] = xla_options
  paths.write_text(workdir / RECORD, json.dumps(record, indent=1, sort_keys=True) + '\n')


def load(workdir: str | os.PathLike) -> RunRecord:
  """The record of the run in `workdir`.

  Raises:
    FileNotFoundError: no run.json (not a trained run's workdir).
    ValueError: an unreadable record or an unknown format.
  """
  workdir = paths.as_path(workdir)
  path = workdir / RECORD
  if not path.is_file():
    have = sorted(p.name for p in workdir.iterdir())[:12] if workdir.is_dir() else None
    raise FileNotFoundError(
        f'{path} not found: --workdir={workdir} is not the workdir of a trained run '
        + ('(the folder does not exist)' if have is None else f'(it holds: {have or "nothing"})')
        + '. Train first (python train.py --config ... --workdir ...) or pass the --workdir of'
        ' a run; runs trained before run records existed must be retrained.')
  try:
    obj = json.loads(path.read_text())
    fmt = obj.get('format')
  except (OSError, ValueError, AttributeError) as e:
    raise ValueError(f'{path} is not a readable run record: {e}') from None
  if fmt != FORMAT:
    raise ValueError(f'{path} has format {fmt!r}; this version reads format {FORMAT}')
  return RunRecord(workdir, _without_retired(config_from_json(obj['config'])),
                   tuple(obj['class_names']), obj['data'], obj['weights'],
                   obj.get('init_from'), obj.get('xla_options'))


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update({f'{key}.{k}': v for k, v in _flat(value).items()})
    else:
      out[key] = _tuples(list(value)) if isinstance(value, (list, tuple)) else value
  return out


def merge(record: RunRecord, given: ml_collections.ConfigDict | None
          ) -> ml_collections.ConfigDict:
  """The recorded config, with the `EVAL_OVERRIDABLE` values of `given` (a --config).

  Raises:
    ConfigMismatchError: `given` differs from the record in any other key, naming each such
      key with both values.
  """
  config = record.config.copy_and_resolve_references()  # The record's own stays as loaded.
  if given is None:
    return config
  refused = [d for d in differences(record, given) if d[0] not in EVAL_OVERRIDABLE]
  if refused:
    raise ConfigMismatchError(
        f'--config differs from the run recorded in {record.workdir / RECORD} in keys that '
        f'define the trained model, its input or its data: {_shown(refused)}. Leave --config '
        f'out (the run\'s own config is used); eval and predict may change only '
        f'{", ".join(EVAL_OVERRIDABLE)}.')
  for key in EVAL_OVERRIDABLE:
    section, name = key.split('.')
    config[section][name] = given[section][name]
  return config


def differences(record: RunRecord, given: ml_collections.ConfigDict
                ) -> list[tuple[str, Any, Any]]:
  """(key, recorded value, `given` value) of every key whose values differ, in key order.

  A key the record lacks was added to the project after the run was trained; its default is
  the behaviour the run had (every new knob defaults to the earlier behaviour): not a
  difference.
  """
  mine, theirs = _flat(record.config), _flat(given)
  return [(k, mine[k], theirs.get(k, '<absent>')) for k in sorted(mine)
          if mine[k] != theirs.get(k, '<absent>')]


def _shown(diffs: list[tuple[str, Any, Any]]) -> str:
  shown = '; '.join(f'{k}: run {old!r}, --config {new!r}' for k, old, new in diffs[:8])
  return shown + (f' and {len(diffs) - 8} more' if len(diffs) > 8 else '')


def check_resume(record: RunRecord, given: ml_collections.ConfigDict,
                 log: Callable[[str], None] = print) -> None:
  """Refuses to resume the run of `record` with a config that trains differently.

  Keys of `RESUME_CHANGEABLE` may differ (each change is logged); for any other, a resumed run
  would continue a trajectory its config does not describe.

  Raises:
    ConfigMismatchError: naming each refused key with both values.
  """
  diffs = differences(record, given)
  refused = [d for d in diffs if d[0] not in RESUME_CHANGEABLE]
  if refused:
    raise ConfigMismatchError(
        f'--config differs from the run being resumed ({record.workdir / RECORD}) in keys '
        f'that change how it trains: {_shown(refused)}. Train it in another --workdir, or '
        f'resume with the recorded values; a resumed run may change only '
        f'{", ".join(RESUME_CHANGEABLE)}.')
  for key, old, new in diffs:
    log(f'Resuming with {key}={new!r} (the run started with {old!r}).')


def check_resume_data(record: RunRecord, info: Any) -> None:
  """Refuses to resume the run of `record` on other data than it trained on.

  info: the `data.DatasetInfo` prepared for this run.
  Raises:
    ConfigMismatchError: the prepared data's manifest is not the recorded one (e.g. the run
      fell back to synthetic data and the data set is now found, or the source folder changed).
  """
  if info.manifest_sha256 != record.data['manifest_sha256']:
    raise ConfigMismatchError(
        f'The data prepared for this run ({info.description}) is not the data the run being '
        f'resumed trained on ({record.data["description"]}; {record.workdir / RECORD}): '
        'a resumed run continues on its own data. Restore that data, or train in another '
        '--workdir.')
