"""TFDS builder `animals10`: Kaggle Animals-10 from a manual download.

    python -m data.tfds_build --manual_dir /path/to/animals10 [--data_dir DIR]
    # or, with apache-beam installed (the tfds CLI imports it):
    tfds build animals10 --imports data.sources.tfds_animals10 --manual_dir /path/to/animals10
    # or
    import data.sources.tfds_animals10
    ds = tfds.load('animals10', split='train', data_dir=...,
                   download_and_prepare_kwargs={'download_config':
                       tfds.download.DownloadConfig(manual_dir='/path/to/animals10')})

One 'train' split; features image (uint8 [H, W, 3]), label (ClassLabel, English names,
sorted), file_name ('<italian folder>/<file>'). Files are validated like the restructuring
does (`data.imagecheck`): unusable ones are skipped, exotic encodings (CMYK JPEG, 16-bit PNG,
GIF, ...) are stored as PIL's RGB decoding.

`export_source` turns the built data set's classes into a class-folder `Source` (the
encoded bytes written out once), so `data.source='tfds'` goes through the same
restructuring and pipeline as every other source.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Callable

import tensorflow_datasets as tfds
from PIL import Image

from data import cache
from data import imagecheck
from data import sources
from data.sources import animals10

_DESCRIPTION = """Animals-10 (Kaggle, alessiocorrado99/animals10): ~26k medium-quality
animal photos from Google Images in 10 classes (dog, cat, horse, spider, butterfly, chicken,
sheep, cow, squirrel, elephant), folder names in Italian."""


class Animals10(tfds.core.GeneratorBasedBuilder):
  """Animals-10 from the Kaggle archive, extracted into the manual dir."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release; validated with PIL, exotic files normalised.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the archive from https://www.kaggle.com/datasets/alessiocorrado99/animals10
  (or `kagglehub.dataset_download('alessiocorrado99/animals10')`) and extract it, so that
  `<manual_dir>/raw-img/<italian class>/*` exists (manual_dir may also be raw-img itself).
  Then pass manual_dir: `python -m data.tfds_build --manual_dir <dir>`, `tfds build
  animals10 --imports data.sources.tfds_animals10 --manual_dir <dir>` or
  DownloadConfig(manual_dir=<dir>).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(names=list(animals10.ANIMALS10_ENGLISH)),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://www.kaggle.com/datasets/alessiocorrado99/animals10',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    raw_img = animals10.find_raw_img(dl_manager.manual_dir)
    if raw_img is None:
      raise AssertionError(f'No raw-img/<italian class>/ under {dl_manager.manual_dir}.\n'
                           f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return {'train': self._generate_examples(raw_img)}

  def _generate_examples(self, raw_img: pathlib.Path):
    for italian, english in sorted(animals10.ITALIAN_TO_ENGLISH.items()):
      folder = raw_img / italian
      if not folder.is_dir():
        continue  # A partial download still builds, with the classes it has.
      files = sorted(p for p in folder.iterdir() if p.is_file()
                     and p.suffix.lower() in imagecheck.IMAGE_EXTENSIONS)
      for path, chk in zip(files, imagecheck.check_many(files)):
        if not chk.ok:
          continue
        if chk.tf_ok:
          image = path
        else:
          with Image.open(path) as img:
            image = imagecheck.to_rgb_array(img)
        name = f'{italian}/{path.name}'
        yield name, {'image': image, 'label': english, 'file_name': name}


def build(manual_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None
          ) -> tfds.core.DatasetBuilder:
  """Builds (once) and returns the `animals10` builder."""
  data_dir = data_dir or cache.cache_dir() / 'tfds'
  builder = Animals10(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def export_source(raw_img: pathlib.Path, classes, where: str, *,
                  data_dir: str | os.PathLike | None = None,
                  log: Callable[[str], None] = print) -> sources.Source:
  """Builds the TFDS data set from `raw_img` and writes `classes`' encoded images out as a
  class-folder tree (once per data set version and classes); returns it as a Source."""
  builder = build(raw_img, data_dir)
  english = [animals10.to_english(c) for c in classes]
  names = builder.info.features['label'].names
  key = {'version': str(builder.version), 'data_dir': str(builder.data_dir), 'classes': english}
  root = cache.cache_dir() / 'tfds-export' / cache.args_hash(key)
  done = root / 'export.json'
  if not (done.exists() and json.loads(done.read_text()) == key):
    log(f'Exporting {", ".join(english)} from TFDS animals10 {builder.version} to {root}')
    shutil.rmtree(root, ignore_errors=True)
    wanted = {names.index(e): e for e in english}
    ds = builder.as_dataset(split='train', decoders={'image': tfds.decode.SkipDecoding()})
    for ex in ds.as_numpy_iterator():
      label = int(ex['label'])
      if label in wanted:
        base = ex['file_name'].decode().split('/', 1)[-1]
        (root / wanted[label]).mkdir(parents=True, exist_ok=True)
        (root / wanted[label] / base).write_bytes(ex['image'])
    done.write_text(json.dumps(key))
  return sources.Source(
      'tfds', root.resolve(), tuple((e, e) for e in english),
      f'TFDS animals10 {builder.version} ({", ".join(english)}) built from {raw_img} ({where}) '
      f'in {builder.data_dir}')

