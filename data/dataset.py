"""`prepare`: config -> restructured subset on disk -> `DatasetInfo`."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

import ml_collections

from data import cache
from data import config as config_lib
from data import restructure
from data import sources
from data.sources import animals10
from data.sources import folder
from data.sources import synthetic


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What data a run uses.

  kind: 'animals10' | 'folder' | 'synthetic' | 'tfds'; root: the restructured subset
  (manifest.json, train/, validation/, test/); class_names: label i = class_names[i];
  num_examples: per split; is_synthetic: not real photos; description: one line;
  banner: loud multi-line warning when synthetic, else ''; manifest_sha256: identifies the
  exact files and split.
  """
  kind: str
  root: pathlib.Path
  class_names: tuple[str, ...]
  num_examples: dict
  is_synthetic: bool
  description: str
  banner: str
  manifest_sha256: str

  def to_json(self) -> dict:
    """JSON-able record for a run's outputs."""
    d = dataclasses.asdict(self)
    d['root'] = str(self.root)
    d['class_names'] = list(self.class_names)
    d['num_examples'] = dict(self.num_examples)
    return d


def resolve_source(config_data: ml_collections.ConfigDict, *,
                   log: Callable[[str], None] = print) -> sources.Source:
  """The `Source` that `config_data` asks for (generating synthetic data when needed)."""
  c = config_data
  if c.source == 'folder' and c.splits == 'folders':
    return folder.split_folder_source(c.path, tuple(c.classes))
  if c.source == 'folder':
    return folder.folder_source(c.path, tuple(c.classes))
  if c.source == 'synthetic':
    return synthetic.source(c.synthetic)
  raw_img, where = animals10.find_animals10(c.path, log=log)
  if raw_img is None:
    if c.source == 'animals10' and c.fallback_to_synthetic:
      src = synthetic.source(c.synthetic)
      return dataclasses.replace(
          src, description=f'{src.description} -- Animals-10 not found, fell back to synthetic '
                           'data (data.fallback_to_synthetic)')
    raise FileNotFoundError(animals10.HOW_TO_GET_ANIMALS10)
  if c.source == 'tfds':
    from data.sources import tfds_animals10  # pylint: disable=g-import-not-at-top  # tensorflow_datasets
    return tfds_animals10.export_source(raw_img, tuple(c.classes), where, log=log)
  return animals10.animals10_source(raw_img, tuple(c.classes), where)


def subset_args(config_data: ml_collections.ConfigDict, source: sources.Source) -> dict:
  """Restructuring arguments for `source` (synthetic: its own sizes, not the Animals-10 ones)."""
  c = config_data
  if source.is_synthetic:
    n, test = c.synthetic.images_per_class, c.synthetic.test_per_class
  else:
    n, test = c.images_per_class, c.test_per_class
  return {'images_per_class': int(n), 'validation_fraction': float(c.validation_fraction),
          'test_per_class': int(test), 'seed': int(c.split_seed), 'link_mode': c.link_mode,
          'splits': c.splits}


def prepare(config_data: ml_collections.ConfigDict, *,
            log: Callable[[str], None] = print) -> DatasetInfo:
  """Resolves the source, restructures it (a no-op when already done) and describes it.

  The caller prints `info.banner` (non-empty for synthetic data) first and in its summary,
  and stores `info.to_json()` with the run's outputs.
  """
  config_lib.validate(config_data)
  src = resolve_source(config_data, log=log)
  args = subset_args(config_data, src)
  if config_data.dir:
    out = pathlib.Path(config_data.dir).expanduser()
  else:
    key = restructure.arguments(src, **args)
    out = cache.cache_dir() / 'datasets' / cache.args_hash(key)
  manifest = restructure.restructure(src, out, log=log, **args)
  how = 'as given' if args['splits'] == 'folders' else f'seed {args["seed"]}'
  desc = f'{src.description}; subset {manifest["num_examples"]} ({how}) in {out}'
  info = DatasetInfo(
      kind=src.kind, root=out, class_names=tuple(manifest['classes']),
      num_examples=dict(manifest['num_examples']), is_synthetic=src.is_synthetic,
      description=desc, banner=sources.synthetic_banner(src.description) if src.is_synthetic
      else '', manifest_sha256=restructure.manifest_sha256(out))
  log(f'Data: {desc}')
  return info
