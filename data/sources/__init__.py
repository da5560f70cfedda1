"""Where the images come from: one module per source, each returning a `Source`.

    animals10        Kaggle Animals-10 (`raw-img/<italian class>/*`): found, or downloaded
    folder           any class-folder tree `<root>/<class>/*`
    synthetic        the project's generated stripes data set
    tfds_animals10   the `animals10` TFDS builder over Animals-10

`data.dataset.resolve_source(config_data)` picks the one `config.data.source` names.
"""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class Source:
  """A class-folder tree to restructure.

  kind: 'animals10' | 'folder' | 'synthetic' | 'tfds'; root: folder holding the class
  folders; classes: (class name, folder name) in label order; description: one line;
  split_folders: empty, or the split folders (`root/<split>/<class folder>/*`, data.splits=
  'folders') whose images are used as given.
  """
  kind: str
  root: pathlib.Path
  classes: tuple[tuple[str, str], ...]
  description: str
  is_synthetic: bool = False
  split_folders: tuple[str, ...] = ()


def synthetic_banner(description: str) -> str:
  line = '!' * 78
  return '\n'.join([
      line,
      '!!! SYNTHETIC DATA: this run does NOT use Animals-10 or any real photos.',
      f'!!! {description}',
      '!!! Set data.path or $ANIMALS10_DIR to train on the real data set.',
      line])
