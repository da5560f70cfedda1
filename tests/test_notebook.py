"""docs/api.ipynb runs top to bottom on a trained smoke run (nbclient, a fresh kernel)."""

from __future__ import annotations

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

from configs import smoke
from inception.train import trainer

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.usefixtures('module_cache'), pytest.mark.slow]


def test_the_api_notebook_runs(tmp_path, monkeypatch):
  wd = tmp_path / 'run'
  trainer.train(smoke.get_config('epochs=2,cut=stem'), wd, progress_bars=False,
                log=lambda _: None)
  monkeypatch.setenv('INCEPTION_FLAX_WORKDIR', str(wd))
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
  nb = nbformat.read(ROOT / 'docs' / 'api.ipynb', as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                   for o in c.get('outputs', []) if o.get('output_type') == 'stream')
  assert '(8, 2)' in text  # Eight test images, two classes.
  assert 'pretrained mixed7, pooled: (8, 768)' in text
  assert text.strip().endswith('True')  # The fitted temperature is what load() applies.
